"""The cluster how-to as written, from our own install: `ray start --head` (the dashboard and job server
come from the `cluster` extra, ray[default]), then `ray job submit --address http://HEAD:8265 -- phicurate
run ...`; the job's records equal an in-process run's.

The head node gets its own ports and temp directory, and is stopped at the end (even on failure) by the ids
of the processes it started, never with `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from contextlib import ExitStack

import psutil
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.runner import read_record, run_pipeline
from tests.conftest import DATA, ROOT, wait_for_url

pytestmark = pytest.mark.slow
BIN = os.path.dirname(sys.executable)  # the venv's ray and phicurate
STAGES = ["ingest", "annotate"]


def _free_ports(n: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _ours(temp_dir: str, head: psutil.Process) -> list[psutil.Process]:
    """The head's processes: its descendants, and any process whose command line names its temp dir."""
    found = {p.pid: p for p in head.children(recursive=True)} if head.is_running() else {}
    for p in psutil.process_iter(["cmdline"]):
        if any(temp_dir in part for part in p.info["cmdline"] or []):
            found.setdefault(p.pid, p)
    found.pop(os.getpid(), None)
    return list(found.values())


@pytest.fixture
def head_node():
    """A local head node on its own ports; yields (dashboard URL, env for the ray CLI)."""
    gcs, dash, client, node, obj, agent_listen, agent_grpc, metrics, runtime_env = _free_ports(9)
    low = 10000 + (os.getpid() % 200) * 100  # worker ports: ours, below the ephemeral ports bind(0) gives
    temp_dir = tempfile.mkdtemp(prefix="rj-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    cmd = [
        *(os.path.join(BIN, "ray"), "start", "--head", "--block", "--disable-usage-stats"),
        *("--node-ip-address", "127.0.0.1", "--port", str(gcs), "--temp-dir", temp_dir),
        *("--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash)),
        *("--ray-client-server-port", str(client), "--node-manager-port", str(node)),
        *("--object-manager-port", str(obj), "--metrics-export-port", str(metrics)),
        *("--dashboard-agent-listen-port", str(agent_listen), "--dashboard-agent-grpc-port", str(agent_grpc)),
        *("--runtime-env-agent-port", str(runtime_env)),
        *("--min-worker-port", str(low), "--max-worker-port", str(low + 99)),
        *("--num-cpus", "2", "--object-store-memory", str(256 * 2**20)),
    ]
    log = open(os.path.join(temp_dir, "ray-start.log"), "w")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    head = psutil.Process(proc.pid)
    url = f"http://127.0.0.1:{dash}"
    try:
        wait_for_url(f"{url}/api/version", proc, 180, log.name)
        yield url, env
    finally:
        procs = _ours(temp_dir, head)
        proc.send_signal(signal.SIGTERM)  # --block: ray start stops what it started
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        _, alive = psutil.wait_procs(procs, timeout=20)
        for p in alive + _ours(temp_dir, head):  # whatever did not stop: killed by its id
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _rows(out, stage):
    files = sorted(str(p) for p in (out / stage).glob("*.parquet"))
    return sorted(pq.read_table(files).to_pylist(), key=lambda r: r["id"])


def test_ray_job_submit_runs_the_pipeline_like_an_in_process_run(
    head_node, write_config, tmp_path, ray_local
):
    url, env = head_node
    inputs = [{"path": str(DATA / "demo" / "onestopenglish.jsonl.zst"), "source": "web/ose"}]
    configs = {}
    for name in ("local", "job"):
        configs[name] = write_config(
            {
                "run": {"name": "rayjob", "output": str(tmp_path / name), "stages": STAGES},
                "ingest": {"inputs": inputs},
                "annotate": {"workers": 1},
            },
            name=f"{name}.yaml",
        )
    run_pipeline(load_config(str(configs["local"])), log=lambda _: None)
    submit = [
        *(os.path.join(BIN, "ray"), "job", "submit", "--address", url, "--"),
        *("phicurate", "run", str(configs["job"]), "--stages", ",".join(STAGES)),
    ]
    r = subprocess.run(submit, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "succeeded" in r.stdout, "\n".join(
        ["ray job submit failed:", r.stdout[-6000:], r.stderr[-3000:]]
    )
    for stage in STAGES:
        a, b = read_record(str(tmp_path / "local"), stage), read_record(str(tmp_path / "job"), stage)
        assert b is not None and b["status"] == "complete", (stage, b)
        for key in ("docs_in", "docs_out", "dropped", "tokens_out", "input_fingerprint"):
            assert a[key] == b[key], (stage, key, a[key], b[key])
        assert _rows(tmp_path / "local", stage) == _rows(tmp_path / "job", stage)
    assert read_record(str(tmp_path / "job"), "ingest")["docs_out"] > 100
