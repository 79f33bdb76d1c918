"""Ingest killed (SIGKILL of a real `phicurate run`, its Ray included) once some of its parts are committed,
then rerun: the rerun recomputes only the parts without a commit (the record's `parts_reused`, and the
reused commits untouched) and gives what an uninterrupted run gives: the same record counts and details,
the same kept and dropped rows.

The inputs are cut into many small parts (`part_bytes`) so that a kill lands between parts; one kill waits
for every part's commit, so it lands in the duplicate-id step (the inputs repeat ids) or after it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from pipeline.runner import read_record
from tests.test_nothing_lost import _fuzz_inputs


def _commits(out) -> dict[str, float]:
    """The part commits in the work directory of a killed run (or the completed stage): name -> mtime."""
    dirs = list(out.glob(".ingest.tmp-*/_parts")) + list(out.glob("ingest/_parts"))
    return {p.stem: p.stat().st_mtime_ns for d in dirs for p in d.glob("*.json")}


def _run(config, out, log, kill_at: int | None = None) -> None:
    """Run `phicurate run config`; with kill_at, SIGKILL its process group once that many parts are
    committed (or when it ends by itself)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(config)],
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the driver and the Ray it started
    )
    deadline = time.time() + 900
    while kill_at is not None and proc.poll() is None and time.time() < deadline:
        if len(_commits(out)) >= kill_at:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=max(1, deadline - time.time()))
    assert kill_at is not None or proc.returncode == 0, "the run failed; see its log"


def _rows(out) -> tuple[list, list, dict]:
    rec = read_record(str(out), "ingest")
    d = out / "ingest"
    kept = pq.read_table([str(p) for p in d.glob("*.parquet")], columns=["id", "text", "meta"])
    dropped = pq.read_table(str(d / "dropped"), columns=["id", "drop_reason", "drop_detail"])
    counts = {k: rec[k] for k in ("docs_in", "docs_out", "dropped", "tokens_out", "parts", "details")}
    return sorted(kept.to_pylist(), key=lambda r: r["id"]), sorted(dropped.to_pylist(), key=str), counts


@pytest.mark.slow  # four real runs, each starting Ray
def test_ingest_killed_after_some_parts_then_rerun_redoes_only_the_rest(tmp_path, write_config):
    d = tmp_path / "in"
    d.mkdir()
    _fuzz_inputs(d, seed=3)
    ingest = {"inputs": [{"path": str(d), "source": "web/kill"}], "max_doc_bytes": 20_000, "part_bytes": 2000}
    ref_cfg = write_config({"run": {"output": str(tmp_path / "ref")}, "ingest": ingest}, "ref.yaml")
    with open(tmp_path / "ref.log", "w") as log:
        _run(ref_cfg, tmp_path / "ref", log)
    reference = _rows(tmp_path / "ref")
    parts = reference[2]["parts"]
    assert parts >= 12 and reference[2]["docs_out"] > 0 and reference[2]["dropped"].get("duplicate_id")

    for case, kill_at in (("some", random.Random(0).randint(2, parts // 2)), ("all", parts)):
        out = tmp_path / f"killed-{case}"
        cfg = write_config({"run": {"output": str(out)}, "ingest": ingest}, f"killed-{case}.yaml")
        with open(tmp_path / f"{case}.log", "w") as log:
            _run(cfg, out, log, kill_at=kill_at)
            before = _commits(out)
            complete = read_record(str(out), "ingest") is not None
            _run(cfg, out, log)
        rec = read_record(str(out), "ingest")
        after = _commits(out)
        if not complete:  # the kill came before the stage was moved into place
            planned = {n for n in before if not n.endswith("-d")}
            assert rec["parts_reused"] == len(planned), f"{case}: see {tmp_path / f'{case}.log'}"
            assert all(after[n] == t for n, t in before.items())  # reused as they were, not redone
            assert len(after) > len(before) or case == "all"
        assert _rows(out) == reference, f"{case}: see {tmp_path / f'{case}.log'}"
        assert not list(out.glob(".ingest.tmp-*"))  # the killed run's work directory was removed
    assert read_record(str(tmp_path / "killed-some"), "ingest")["parts_reused"] >= 2
