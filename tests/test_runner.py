"""The stage runner: records, skip on rerun, --force, reruns on change, and atomic stage directories."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.compute as pc
import pytest

from pipeline import runner
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.registry import BY_NAME
from pipeline.runner import read_record, run_pipeline
from pipeline.tools.status import print_status

INPUT = {"path": "tests/data/demo/onestopenglish.jsonl.zst", "source": "web/ose"}


def test_record_rerun_skip_force_and_change(write_config, tmp_path, ray_local, capsys):
    path = write_config({"ingest": {"inputs": [INPUT]}})
    out = str(tmp_path / "out")
    [first] = run_pipeline(load_config(path))
    rec = json.loads((tmp_path / "out" / "ingest" / "_stage.json").read_text())
    assert set(rec) >= {
        "stage",
        "status",
        "config_hash",
        "input_fingerprint",
        "docs_in",
        "docs_out",
        "dropped",
        "tokens_out",
        "wall_s",
    }
    assert rec["status"] == "complete" and rec["docs_in"] == 756
    assert rec["docs_in"] == rec["docs_out"] + sum(rec["dropped"].values())
    assert rec["tokens_out"] > 100_000

    [second] = run_pipeline(load_config(path))
    assert second.get("skipped") and second["wall_s"] == first["wall_s"]  # the old record: nothing reran

    [forced] = run_pipeline(load_config(path), force=True)
    assert not forced.get("skipped")

    # A changed threshold in the stage's section reruns it, with a different outcome.
    path2 = write_config({"ingest": {"inputs": [INPUT], "min_text_chars": 4000}}, name="stricter.yaml")
    [changed] = run_pipeline(load_config(path2))
    assert not changed.get("skipped") and changed["config_hash"] != first["config_hash"]
    assert changed["dropped"]["empty_text"] > 0 and changed["docs_out"] < first["docs_out"]

    print_status(out)
    table = capsys.readouterr().out
    assert "ingest" in table and f"{changed['docs_out']}" in table and "empty_text" in table


def test_changed_input_file_reruns(tmp_path, write_config, ray_local):
    src = tmp_path / "docs.jsonl"
    src.write_text(json.dumps({"text": "one document"}) + "\n")
    path = write_config({"ingest": {"inputs": [{"path": str(src), "source": "web/x"}]}})
    run_pipeline(load_config(path))
    src.write_text(json.dumps({"text": "one document"}) + "\n" + json.dumps({"text": "and another"}) + "\n")
    [rec] = run_pipeline(load_config(path))
    assert not rec.get("skipped") and rec["docs_out"] == 2


def test_failure_before_commit_leaves_nothing_complete(write_config, tmp_path, ray_local, monkeypatch):
    """A stage that dies after writing parts but before its record is not complete, and a rerun recovers."""
    path = write_config({"ingest": {"inputs": [INPUT]}})
    out = str(tmp_path / "out")

    def die(src, dst):
        assert any(name.endswith(".parquet") for name in os.listdir(src))  # parts were already written
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(runner.storage, "replace_dir", die)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(load_config(path))
    assert read_record(out, "ingest") is None
    assert not (tmp_path / "out" / "ingest").exists()
    with pytest.raises(UserError, match="reads the output of 'ingest', which is not complete"):
        downstream = load_config(
            write_config({"ingest": {"inputs": [INPUT]}, "annotate": {}}, name="down.yaml")
        )
        runner.input_fingerprint(BY_NAME["annotate"].implementation(), downstream, out)

    monkeypatch.undo()
    [rec] = run_pipeline(load_config(path))
    assert not rec.get("skipped") and rec["docs_in"] == 756
    assert not [p for p in os.listdir(out) if p.startswith(".ingest.tmp-")]  # the dead run's parts are gone


@pytest.mark.slow
def test_killed_process_mid_write_is_not_complete(write_config, tmp_path):
    """SIGKILL a real `phicurate run` while its stage is writing; the stage is not complete afterwards."""
    path = write_config(
        {"ingest": {"inputs": [{"path": "tests/data/demo/python-3.11-docs.warc.gz", "source": "web/docs"}]}}
    )
    out = tmp_path / "out"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(path)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob(".ingest.tmp-*")):
        assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        time.sleep(0.2)
    time.sleep(2)  # inside the stage: reading and extracting
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_record(str(out), "ingest") is None
    assert not (out / "ingest").exists()
    assert list(out.glob(".ingest.tmp-*"))  # the dead run's work directory, never read as a stage


@pytest.mark.parametrize("how", ["parts", "dataset"])
def test_a_stage_that_loses_documents_fails_the_count(how, write_config, ray_local, monkeypatch):
    """docs_in comes from the upstream record, not from the stage's own output: a stage that silently
    loses documents (here: select forgetting the rows whose id starts with 0) fails instead of passing,
    whether it runs by part (its tasks count what they read) or returns a Dataset the runner writes."""
    import dataclasses
    import importlib

    from pipeline.parts import read_part
    from pipeline.stage import StageOutput
    from pipeline.stages.select.stage import select_batch

    path = write_config({"ingest": {"inputs": [INPUT]}, "annotate": {"workers": 1}, "select": {}})
    run_pipeline(load_config(path), stages=["ingest", "annotate"], log=lambda _: None)
    module = importlib.import_module(BY_NAME["select"].module)
    honest = module.STAGE

    def lossy(ctx):  # defined here, so Ray ships these functions to the workers by value
        cfg = ctx.section

        def forget(t):
            return select_batch(t.filter(pc.invert(pc.starts_with(t["id"], "0"))), cfg)

        if how == "dataset":
            return StageOutput(docs=ctx.read("annotate").map_batches(forget, batch_format="pyarrow"))

        def factory():
            return lambda spec, stats: (forget(t) for t in read_part(spec))

        return StageOutput(parts=ctx.run_parts(ctx.upstream_parts("annotate"), factory))

    monkeypatch.setattr(module, "STAGE", dataclasses.replace(honest, run=lossy))
    said = "its parts read 7[0-9]{2} documents, but the upstream stage kept 756"
    with pytest.raises(RuntimeError, match=said if how == "parts" else "stage select lost documents: in 756"):
        run_pipeline(load_config(path), stages=["select"], log=lambda _: None)
    monkeypatch.undo()
    [rec] = run_pipeline(load_config(path), stages=["select"], log=lambda _: None)
    assert rec["docs_in"] == 756 == rec["docs_out"] + sum(rec["dropped"].values())
