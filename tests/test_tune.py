"""tune: its kept-document and token counts must be what select then does with that threshold."""

from __future__ import annotations

import contextlib
import io

import pytest

from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.runner import read_record, run_pipeline
from pipeline.tools.cli import main
from pipeline.tools.tune import tune
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
