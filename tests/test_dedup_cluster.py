"""Dedup on a real two-node Ray cluster (2 nodes x 1 CPU) gives the same output as in-process (both nodes
on this machine, so the steps' work directory is shared as a cluster's storage would be)."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.stages.dedup.config import DedupConfig
from pipeline.stages.dedup.core import dedup_dataset
from tests.test_dedup import articles, ose_rows

# Runs in its own process: the test session already holds an in-process Ray.
CLUSTER_RUN = """
import sys
import ray
from ray.cluster_utils import Cluster
from pipeline.stages.dedup.core import dedup_dataset
from pipeline.stages.dedup.config import DedupConfig

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
assert len(ray.nodes()) == 2, ray.nodes()
out, _ = dedup_dataset(ray.data.read_parquet(sys.argv[1]).repartition(4), DedupConfig(), sys.argv[3])
out.write_parquet(sys.argv[2])
ray.shutdown()
cluster.shutdown()
"""


def _rows(path) -> list[dict]:
    return sorted(
        pq.read_table(sorted(str(p) for p in path.glob("*.parquet"))).to_pylist(), key=lambda r: r["id"]
    )


@pytest.mark.slow
def test_two_node_cluster_matches_in_process(ray_local, tmp_path):
    # the intermediate articles and their second copy (natural near duplicates), the advanced ones as far
    # pairs
    docs = articles("Int", 60) + articles("Adv", 20)
    copies = [r for r in ose_rows() if "/Int-Txt/Int-Txt/" in r["id"]][:60]
    rows = docs + copies + [{"id": "exact-copy", "text": docs[0]["text"]}]
    n = len(rows)
    table = pa.table(
        {
            "id": [r["id"] for r in rows],
            "text": [r["text"] for r in rows],
            "source": ["web/ose"] * n,
            "url": [None] * n,
            "meta": ["{}"] * n,
        }
    )
    inp = tmp_path / "input.parquet"
    pq.write_table(table, inp)

    local, _ = dedup_dataset(
        ray_local.data.read_parquet(str(inp)).repartition(3), DedupConfig(), str(tmp_path / "work-local")
    )
    local.write_parquet(str(tmp_path / "local"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run(
        [sys.executable, "-c", CLUSTER_RUN, str(inp), str(tmp_path / "cluster"), str(tmp_path / "work")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    a, b = _rows(tmp_path / "local"), _rows(tmp_path / "cluster")
    assert a == b
    reasons = [x["drop_reason"] for x in a]
    assert reasons.count("exact_dup") == 1 and reasons.count("near_dup") >= 40, reasons
