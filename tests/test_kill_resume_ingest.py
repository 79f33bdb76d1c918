"""Ingest killed at random points (SIGKILL of a real `phicurate run`, its Ray included) and rerun gives what
an uninterrupted run gives: the same record counts and the same kept and dropped rows.

Only ingest here (issue 20, item 5); the points are spread over the whole run, the commit included, by
killing after a seeded random share of the uninterrupted run's wall time.
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


def _run(config, log, kill_after: float | None = None) -> float:
    """Run `phicurate run config`; with kill_after, SIGKILL its process group after that many seconds.
    Returns the wall time."""
    t0 = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(config)],
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the driver and the Ray it started
    )
    try:
        proc.wait(timeout=kill_after if kill_after is not None else 900)
    except subprocess.TimeoutExpired:
        if kill_after is None:
            raise
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return time.time() - t0
    assert kill_after is not None or proc.returncode == 0, "the run failed; see its log"
    return time.time() - t0


def _rows(out) -> tuple[list, list, dict]:
    rec = read_record(str(out), "ingest")
    d = out / "ingest"
    kept = pq.read_table([str(p) for p in d.glob("*.parquet")], columns=["id", "text", "meta"])
    dropped = pq.read_table(str(d / "dropped"), columns=["id", "drop_reason", "drop_detail"])
    counts = {k: rec[k] for k in ("docs_in", "docs_out", "dropped")}
    return sorted(kept.to_pylist(), key=lambda r: r["id"]), sorted(dropped.to_pylist(), key=str), counts


@pytest.mark.slow  # five real runs, each starting Ray
def test_ingest_killed_anywhere_then_rerun_equals_an_uninterrupted_run(tmp_path, write_config):
    d = tmp_path / "in"
    d.mkdir()
    _fuzz_inputs(d, seed=3)
    ingest = {"inputs": [{"path": str(d), "source": "web/kill"}], "max_doc_bytes": 20_000}
    ref_cfg = write_config({"run": {"output": str(tmp_path / "ref")}, "ingest": ingest}, "ref.yaml")
    with open(tmp_path / "ref.log", "w") as log:
        wall = _run(ref_cfg, log)
    reference = _rows(tmp_path / "ref")
    assert reference[2]["docs_out"] > 0 and reference[2]["dropped"]

    for seed in (0, 1):
        out = tmp_path / f"killed{seed}"
        cfg = write_config({"run": {"output": str(out)}, "ingest": ingest}, f"k{seed}.yaml")
        with open(tmp_path / f"k{seed}.log", "w") as log:
            _run(cfg, log, kill_after=random.Random(seed).uniform(0.3, 1.0) * wall)
            _run(cfg, log)
        assert _rows(out) == reference, f"seed {seed}: see {tmp_path / f'k{seed}.log'}"
        assert not list(out.glob(".ingest.tmp-*"))  # the killed run's work directory was removed
