"""A run on a real two-node Ray cluster gives the same output as the in-process run: ingest's documents,
and mix's shards byte for byte (its tokenizing actors spread over both nodes)."""

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.runner import read_record, run_pipeline

INPUTS = [
    {"path": "tests/data/demo/onestopenglish.jsonl.zst", "source": "web/ose"},
    {"path": "tests/data/warcio/example.warc.gz", "source": "web/warcio"},
]
RECIPE = {"sources": [{"name": "web", "stage": "ingest", "weight": 1.0}]}
MIX = {
    "tokenizer": "tests/data/tokenizer/phi3",
    "shard_tokens": 500_000,
    "phase1": RECIPE,
    "phase2": {**RECIPE, "tokens": 300_000},
}

# Runs in its own process: the test session already holds an in-process Ray.
CLUSTER_RUN = """
import sys
from ray.cluster_utils import Cluster
from pipeline.config import load_config
from pipeline.runner import run_pipeline

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
config = load_config(sys.argv[1])
config = config.model_copy(update={"ray": config.ray.model_copy(update={"address": cluster.address})})
import ray
run_pipeline(config)
assert len(ray.nodes()) == 2, ray.nodes()
ray.shutdown()
cluster.shutdown()
"""


def _rows(out, stage):
    files = sorted(str(p) for p in (out / stage).glob("*.parquet"))
    return sorted(pq.read_table(files).to_pylist(), key=lambda r: r["id"])


@pytest.mark.slow
def test_two_node_cluster_matches_in_process(write_config, tmp_path, ray_local):
    stages = ["ingest", "mix"]
    local = write_config(
        {
            "run": {"output": str(tmp_path / "local"), "stages": stages},
            "ingest": {"inputs": INPUTS},
            "mix": MIX,
        },
        name="local.yaml",
    )
    multi = write_config(
        {
            "run": {"output": str(tmp_path / "cluster"), "stages": stages},
            "ingest": {"inputs": INPUTS},
            "mix": MIX,
        },
        name="cluster.yaml",
    )
    run_pipeline(load_config(local))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run(
        [sys.executable, "-c", CLUSTER_RUN, str(multi)], env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-4000:]
    a, b = read_record(str(tmp_path / "local"), "ingest"), read_record(str(tmp_path / "cluster"), "ingest")
    for key in ("docs_in", "docs_out", "dropped", "tokens_out", "config_hash", "input_fingerprint"):
        assert a[key] == b[key], key
    assert _rows(tmp_path / "local", "ingest") == _rows(tmp_path / "cluster", "ingest")
    assert a["docs_out"] > 700
    shards = sorted(
        p.relative_to(tmp_path / "local") for p in (tmp_path / "local" / "mix").rglob("*") if p.is_file()
    )
    assert len([p for p in shards if p.suffix == ".bin"]) > 2
    assert shards == sorted(
        p.relative_to(tmp_path / "cluster") for p in (tmp_path / "cluster" / "mix").rglob("*") if p.is_file()
    )
    for p in shards:  # manifest.json names its own directory (absolute blend prefixes): local's, cluster's
        if p.name != "_stage.json":
            local = (tmp_path / "local" / p).read_bytes()
            local = local.replace(str(tmp_path / "local").encode(), str(tmp_path / "cluster").encode())
            assert local == (tmp_path / "cluster" / p).read_bytes(), p
