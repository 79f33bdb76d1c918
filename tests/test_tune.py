"""tune: its kept-document and token counts must be what select then does with that threshold."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.runner import read_record, run_pipeline
from pipeline.stages.select import rules
from pipeline.stages.select.config import GopherQualityRules, SelectConfig
from pipeline.tools import tune as tune_module
from pipeline.tools.cli import main
from pipeline.tools.tune import tune
from tests import test_report as report_test
from tests.conftest import ROOT
from tests.test_annotate_select import QUIET, _cfg, _read, corpus  # noqa: F401  (corpus is a fixture)

# Only the Gopher word-count rules, so that a threshold on words moves the kept set of this small corpus.
RULES = {
    "lang": None,
    "lang_score": None,
    "gopher_repetition": None,
    "c4_quality": None,
    "fineweb_quality": None,
    "gopher_quality": {
        "min_avg_word_length": None,
        "max_avg_word_length": None,
        "min_stop_words": None,
        "max_non_alpha_words_ratio": None,
        "max_bullet_lines_ratio": None,
    },
}


def _with_min_words(n: int) -> dict:
    return {**RULES, "gopher_quality": {**RULES["gopher_quality"], "min_doc_words": n}}


def test_tune_counts_equal_what_select_keeps(ray_local, write_config, corpus, tmp_path):  # noqa: F811
    base = write_config(_cfg(corpus, _with_min_words(50)))
    cfg = load_config(base)
    run_pipeline(cfg, **QUIET)
    out = cfg.run.output
    sel = read_record(out, "select")

    s = tune(out, "gopher_quality:gopher_short_doc", at=[50, 300, 600], out=io.StringIO())
    rows = {t: (d, w) for t, d, w in s.rows}
    assert s.keep_above and s.current == 50 and s.docs == 15
    assert rows[50] == (sel["docs_out"], sel["tokens_out"])

    for t in (300, 600):  # the same thresholds through select itself: only select reruns
        moved = load_config(write_config(_cfg(corpus, _with_min_words(t)), name=f"c{t}.yaml"))
        recs = {r["stage"]: r for r in run_pipeline(moved, **QUIET)}
        assert recs["annotate"].get("skipped") and not recs["select"].get("skipped")
        assert rows[t] == (recs["select"]["docs_out"], recs["select"]["tokens_out"]), t
    assert rows[50][0] > rows[300][0] > rows[600][0]

    # From the command line, with the rules of a config file: table, histogram and samples on both sides.
    cfg_path = write_config(_cfg(corpus, _with_min_words(300)), name="c300.yaml")
    png = tmp_path / "words.png"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert (
            main(
                [
                    "tune",
                    out,
                    "--signal",
                    "gopher_quality:gopher_short_doc",
                    "--config",
                    str(cfg_path),
                    "--samples",
                    "2",
                    "--plot",
                    str(png),
                ]
            )
            == 0
        )
    text = buf.getvalue()
    assert "* current threshold in the config: gopher_words >= 300" in text
    assert "documents just below 300 (dropped)" in text and "documents just above 300 (kept)" in text
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"

    # An upper bound: keep at or below; the other rules of the config still apply.
    s = tune(out, "gopher_quality:gopher_long_doc", config_path=str(base), at=[300], out=io.StringIO())
    words = [r["gopher_words"] for r in _read(out, "annotate")]
    assert not s.keep_above and s.rows[0][1] == sum(50 <= w <= 300 for w in words)

    with pytest.raises(UserError, match="2 rules on it"):
        tune(out, "gopher_words", out=io.StringIO())
    with pytest.raises(UserError, match="no column"):
        tune(out, "edu_score", out=io.StringIO())


TUNE_PEAK = """
import io, json, resource, sys
from pipeline.tools.tune import tune
tune(sys.argv[1], "gopher_quality:gopher_short_doc", at=[100, 500, 1000], n_samples=3, out=io.StringIO())
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _brute(table, cfg, t: int) -> tuple[int, int]:
    """What select keeps with min_doc_words = t, from the whole signal table in memory."""
    moved = cfg.model_copy(
        update={"gopher_quality": cfg.gopher_quality.model_copy(update={"min_doc_words": t})}
    )
    reason, _ = rules.first_failure(table, moved)
    kept = pc.is_null(reason).to_numpy(zero_copy_only=False)
    return int(kept.sum()), int(table["n_words"].to_numpy()[kept].sum())


def test_tune_streams_exact_counts_and_reads_text_only_for_samples(tmp_path, monkeypatch):
    """Over several files and row groups: every row of the sweep equals select's rules on the whole table
    (also on a grid taken from a sample), the samples are the documents nearest the threshold, and the
    peak memory does not depend on the text column."""
    cfg = SelectConfig(
        lang=["en", "fr"],
        lang_score=0.2,
        gopher_repetition=None,
        c4_quality=None,
        fineweb_quality=None,
        gopher_quality=GopherQualityRules(
            min_doc_words=100,
            max_doc_words=1800,
            **dict.fromkeys(
                [
                    "min_avg_word_length",
                    "max_avg_word_length",
                    "max_symbol_word_ratio",
                    "max_bullet_lines_ratio",
                    "max_ellipsis_lines_ratio",
                    "max_non_alpha_words_ratio",
                    "min_stop_words",
                ]
            ),
        ),
    )
    outs = {}
    for name, with_text in (("no-text", False), ("text", True)):
        outs[name] = tmp_path / name
        report_test._output(outs[name], with_text=with_text)
        report_test._record(outs[name], "select", 1, 1, {}, details={"select": cfg.model_dump()})
    out = str(outs["text"])
    table = pq.read_table(str(outs["no-text"] / "annotate"))

    buf = io.StringIO()
    s = tune(out, "gopher_quality:gopher_short_doc", at=[100, 500, 1000], n_samples=3, out=buf)
    assert s.docs == table.num_rows and s.words == pc.sum(table["n_words"]).as_py()
    assert [(d, w) for _, d, w in s.rows] == [_brute(table, cfg, t) for t in (100, 500, 1000)]

    # the 3 documents on each side of 100 among those passing the other rules, by a stable sort in memory
    others = [r for r in rules.rules(cfg) if r.reason != "gopher_quality:gopher_short_doc"]
    ok = np.ones(table.num_rows, bool)
    for r in others:
        ok &= ~r.fails(table).to_numpy(zero_copy_only=False)
    v = table["gopher_words"].to_numpy()
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(v[idx], kind="stable")]
    split = int(np.searchsorted(v[order], 100, side="left"))
    ids = table["id"].to_pylist()
    expect = [ids[i] for i in order[split - 3 : split][::-1]] + [ids[i] for i in order[split : split + 3]]
    assert ["d" + n for n in re.findall(r"\] d(\d+) \(web/a\): doc \1 ", buf.getvalue())] == expect

    monkeypatch.setattr(tune_module, "GRID_SAMPLE", 500)  # the default grid from a sample: counts still exact
    s = tune(out, "gopher_quality:gopher_short_doc", out=io.StringIO())
    assert 10 <= len(s.rows) <= 22 and any(t == 100 for t, _, _ in s.rows)
    for t, d, w in s.rows:
        assert (d, w) == _brute(table, cfg, t), t

    peaks = {}
    for name, o in outs.items():
        r = subprocess.run(
            [sys.executable, "-c", TUNE_PEAK, str(o)], cwd=ROOT, capture_output=True, text=True, timeout=600
        )
        assert r.returncode == 0, r.stderr[-3000:]
        peaks[name] = json.loads(r.stdout.strip().splitlines()[-1])["peak_mb"]
    text_mb = 2 * report_test.ROWS * report_test.TEXT_BYTES / 2**20
    assert peaks["text"] - peaks["no-text"] < 0.25 * text_mb, (peaks, text_mb)
