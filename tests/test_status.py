"""status: per stage docs in, kept, dropped, parts, and the chain of counts between stages, which it must
see broken in a record edited by hand."""

from __future__ import annotations

import contextlib
import io

from pipeline import storage
from pipeline.config import load_config
from pipeline.runner import run_pipeline
from pipeline.tools.cli import main
from pipeline.tools.status import chain
from tests.test_annotate_select import QUIET, _cfg, corpus  # noqa: F401  (corpus is a fixture)


def _status(out: str) -> tuple[int, dict[str, list[str]], str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["status", out])
    lines = buf.getvalue().splitlines()
    return code, {ln.split()[0]: ln.split() for ln in lines[2:-1]}, lines[-1]


def _edit(out: str, stage: str, **changes) -> None:
    path = storage.join(out, stage, "_stage.json")
    storage.write_json(path, {**storage.read_json(path), **changes})


def test_status_shows_counts_parts_and_the_chain(ray_local, write_config, corpus):  # noqa: F811
    cfg = load_config(write_config({**_cfg(corpus), "dedup": {}}))
    recs = {r["stage"]: r for r in run_pipeline(cfg, **QUIET)}
    out = cfg.run.output

    code, rows, last = _status(out)
    assert code == 0 and last.endswith("chain: holds"), last
    assert list(rows) == ["ingest", "annotate", "select", "dedup"]
    for stage, r in recs.items():
        assert rows[stage][1:5] == [
            "complete",
            str(r["docs_in"]),
            str(r["docs_out"]),
            str(sum(r["dropped"].values())),
        ], stage
    for stage in ("annotate", "select"):  # run by part: parts and how many were reused
        assert rows[stage][5:7] == [str(recs[stage]["parts"]), f"({recs[stage]['parts_reused']})"], stage
    line = " ".join(rows["select"])
    assert "in = annotate kept" in line and "in = records its readers saw" in " ".join(rows["ingest"])
    assert recs["select"]["docs_in"] == recs["annotate"]["docs_out"] == 15

    # select's record says it read and kept 3 documents fewer (its own sum still adds up): it no longer
    # matches what annotate kept, and dedup no longer matches what it kept
    sel = recs["select"]
    _edit(out, "select", docs_in=sel["docs_in"] - 3, docs_out=sel["docs_out"] - 3)
    code, rows, last = _status(out)
    assert last.endswith("chain: BROKEN at select, dedup"), last
    assert f"BROKEN: annotate kept {recs['annotate']['docs_out']}" in " ".join(rows["select"])
    assert f"BROKEN: select kept {sel['docs_out'] - 3}" in " ".join(rows["dedup"])
    links = chain({s: storage.read_json(storage.join(out, s, "_stage.json")) for s in recs})
    assert [s for s, x in links.items() if not x.ok] == ["select", "dedup"]
    assert links["select"].upstream == "annotate" and links["dedup"].upstream == "select"

    # dedup's record loses a document of its own: in != kept + dropped
    _edit(out, "select", docs_in=sel["docs_in"], docs_out=sel["docs_out"])
    dd = recs["dedup"]
    _edit(out, "dedup", docs_out=dd["docs_out"] - 1)
    code, rows, last = _status(out)
    assert last.endswith("chain: BROKEN at dedup"), last
    assert "BROKEN: " in " ".join(rows["dedup"]) and "kept +" in " ".join(rows["dedup"])

    # a stage without a record is incomplete, and the stage reading it is flagged
    storage.remove_file(storage.join(out, "annotate", "_stage.json"))
    _edit(out, "dedup", docs_out=dd["docs_out"])
    code, rows, last = _status(out)
    assert rows["annotate"][1] == "incomplete" and last.endswith("chain: BROKEN at select"), last
    assert "annotate has no complete record" in " ".join(rows["select"])


def test_a_record_without_counts_is_a_break_not_a_crash(tmp_path):
    """A record made by hand or by another tool (no docs_in) is flagged on its row; the table still prints."""
    out = tmp_path / "out"
    rec = {"status": "complete", "config_hash": "x", "input_fingerprint": "y", "dropped": {}}
    for stage in ("dedup", "decontaminate"):
        (out / stage).mkdir(parents=True)
    storage.write_json(str(out / "dedup" / "_stage.json"), {**rec, "docs_out": 1})
    storage.write_json(str(out / "decontaminate" / "_stage.json"), {**rec, "docs_in": 1, "docs_out": 1})
    code, rows, last = _status(str(out))
    assert code == 0 and last.endswith("BROKEN at dedup"), last
    assert "no docs_in" in " ".join(rows["dedup"]) and rows["decontaminate"][1] == "complete"
