"""Shared fixtures: one small in-process Ray for the session, the bundled data, a helper to write configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def ray_local():
    """An in-process Ray with 2 CPUs and a small object store, shared by the tests of a session."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, object_store_memory=512 * 2**20, include_dashboard=False, log_to_driver=False)
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
