"""The whole chain (ingest, annotate, select, dedup, decontaminate, mix) with its output on an S3-compatible
server (moto on 127.0.0.1): every stage's record equals a local run's, every file it wrote is the same bytes
(mix's manifests name their own location), the part commits are there, and a rerun skips every stage."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest

from pipeline.config import load_config
from pipeline.runner import run_pipeline
from tests.test_kill_resume import STAGES, _config, _write_corpus

pytestmark = pytest.mark.slow  # two runs of six stages

SAME = ("docs_in", "docs_out", "dropped", "tokens_out", "parts", "parts_reused", "config_hash")


def _files(fs: pafs.FileSystem, root: str, stage: str, out: str) -> dict[str, bytes]:
    found = fs.get_file_info(pafs.FileSelector(f"{root}/{stage}", recursive=True))
    files = {}
    for info in found:
        if info.type == pafs.FileType.File and info.base_name != "_stage.json":
            with fs.open_input_stream(info.path) as f:
                files[info.path[len(root) + 1 :]] = f.read().replace(out.encode(), b"OUT")
    return files


def test_the_chain_on_an_object_store_equals_a_local_run_and_a_rerun_skips(
    tmp_path, write_config, ray_local, s3_bucket
):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    _write_corpus(corpus, files=4, docs=30)
    outs = {"local": str(tmp_path / "local"), "remote": f"{s3_bucket}/run"}
    recs = {}
    for name, out in outs.items():
        cfg = load_config(_config(tmp_path, corpus, tmp_path / name), output=out)
        recs[name] = {r["stage"]: r for r in run_pipeline(cfg, log=lambda _: None)}
    assert list(recs["remote"]) == STAGES
    fs_local, fs_remote = pafs.LocalFileSystem(), pafs.FileSystem.from_uri(outs["remote"])[0]
    remote_root = outs["remote"].removeprefix("s3://")
    for stage in STAGES:
        a, b = recs["local"][stage], recs["remote"][stage]
        assert {k: a.get(k) for k in SAME} == {k: b.get(k) for k in SAME}, stage
        assert b["parts"] >= 1 and b["docs_out"] > 0, stage
        local = _files(fs_local, outs["local"], stage, outs["local"])
        remote = _files(fs_remote, remote_root, stage, outs["remote"])
        assert local.keys() == remote.keys() and local == remote, stage
        assert any(k.startswith(f"{stage}/_parts/") for k in remote) or stage == "mix", stage
    again = run_pipeline(load_config(_config(tmp_path, corpus, tmp_path / "remote"), output=outs["remote"]))
    assert all(r.get("skipped") for r in again), [r["stage"] for r in again if not r.get("skipped")]
