"""Dedup's distributed parts: connected components on Ray against scipy's, the optional Jaccard verification
of candidate pairs, and that no document, edge or cluster row reaches the driver."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.stages.dedup import components
from pipeline.stages.dedup.config import DedupConfig
from pipeline.stages.dedup.core import dedup_dataset
from pipeline.stages.dedup.steps import Steps
from tests.test_dedup import articles, jaccard, near_copy, run, table


def chain_graph(seed: int = 0) -> pa.Table:
    """Edges (a, b) of a random graph on rank-like strings: two long chains whose rank order is shuffled
    along them (so that minima travel far), and a few random edges."""
    rng = random.Random(seed)
    nodes = [f"1{rng.randrange(16**16):016x}doc{k}" for k in range(150)]
    edges = [(nodes[i], nodes[i + 1]) for i in range(0, 59)] + [
        (nodes[i], nodes[i + 1]) for i in range(60, 99)
    ]
    edges += [(rng.choice(nodes[100:]), rng.choice(nodes[100:])) for _ in range(40)]
    edges = [e for e in edges if e[0] != e[1]]
    return pa.table({"a": [e[0] for e in edges], "b": [e[1] for e in edges]})


def scipy_clusters(edges: pa.Table) -> list[tuple[str, str, int]]:
    nodes = sorted(set(edges["a"].to_pylist()) | set(edges["b"].to_pylist()))
    index = {n: i for i, n in enumerate(nodes)}
    a = [index[x] for x in edges["a"].to_pylist()]
    b = [index[x] for x in edges["b"].to_pylist()]
    _, label = connected_components(
        coo_matrix((np.ones(len(a)), (a, b)), shape=(len(nodes), len(nodes))), directed=False
    )
    root: dict[int, str] = {}
    for i, lab in enumerate(label):  # nodes are sorted: the first of a label is its smallest
        root.setdefault(lab, nodes[i])
    size = np.bincount(label)
    return sorted((n, root[lab], int(size[lab])) for n, lab in zip(nodes, label))


def test_components_match_scipy_on_long_chains(ray_local, tmp_path):
    edges = chain_graph()
    files = []
    for k in range(3):  # three input files, as the edges step writes one per partition
        files.append(str(tmp_path / f"edges-{k}.parquet"))
        pq.write_table(edges.slice(k * 50, 50), files[-1])
    out, figures = components.clusters(Steps(str(tmp_path / "w"), "k"), [(f, None) for f in files], 3)
    got = sorted((r["rank"], r["root"], r["size"]) for r in pq.read_table(out).to_pylist())
    assert figures["cc_rounds"] > 1
    assert got == scipy_clusters(edges)
    assert figures["docs_with_duplicates"] == len(got) and figures["clusters"] == len({g[1] for g in got})
    with pytest.raises(RuntimeError, match="did not converge in 1 "):
        components.clusters(Steps(str(tmp_path / "w1"), "k"), [(f, None) for f in files], 3, max_rounds=1)


class DriverFetches:
    """Records the columns of every batch that Ray Data hands to the driver (take_all, iter_rows,
    iter_batches, to_pandas and count all go through DataIterator._iter_batches) and forbids the
    block-reference exports."""

    def __init__(self, monkeypatch):
        from ray.data import Dataset
        from ray.data.iterator import DataIterator

        self.columns: set[str] = set()
        inner = DataIterator._iter_batches

        def spy(it, *args, **kwargs):
            for batch in inner(it, *args, **kwargs):
                self.columns |= set(batch.column_names if isinstance(batch, pa.Table) else batch.keys())
                yield batch

        def forbidden(*args, **kwargs):
            raise AssertionError("block references exported to the driver")

        monkeypatch.setattr(DataIterator, "_iter_batches", spy)
        for name in ("to_arrow_refs", "to_pandas_refs", "to_numpy_refs", "get_internal_block_refs"):
            monkeypatch.setattr(Dataset, name, forbidden)


def test_verification_drops_pairs_below_threshold_and_driver_gets_only_counts(
    ray_local, monkeypatch, tmp_path
):
    adv = articles("Adv", 4)
    docs = [(f"a{i}", a["text"]) for i, a in enumerate(adv)]
    low, high = ("z-low", near_copy(docs[0][1], 40, seed=1)), ("z-high", near_copy(docs[1][1], 3, seed=2))
    j_low, j_high = jaccard(low[1], docs[0][1]), jaccard(high[1], docs[1][1])
    assert 0.5 < j_low < 0.7 and j_high > 0.9, (j_low, j_high)
    t = table(docs + [low, high])
    # 56 bands of 2 rows: a pair at J 0.5 becomes a candidate with probability 1 - (1 - 0.25)**56 > 0.9999
    loose = {"bands": 56, "rows": 2}

    off = run(ray_local, t, DedupConfig(**loose))
    assert (off["z-low"]["drop_reason"], off["z-low"]["drop_detail"]) == ("near_dup", "a0")  # LSH's candidate
    assert (off["z-high"]["drop_reason"], off["z-high"]["drop_detail"]) == ("near_dup", "a1")

    fetched = DriverFetches(monkeypatch)
    ds = ray_local.data.from_arrow(t).repartition(3)
    cfg = DedupConfig(**loose, verify_threshold=round(j_low + 0.01, 3))
    out, details = dedup_dataset(ds, cfg, str(tmp_path / "work"))
    # the keys step's counts (one row per task) and those of count(), if it runs (__num_rows); the other
    # steps' counts come back from plain Ray tasks as dicts
    assert fetched.columns - {"__num_rows"} == {"docs", "key_rows"}, fetched.columns
    monkeypatch.undo()
    on = {r["id"]: r for r in out.take_all()}
    assert on["z-low"]["drop_reason"] is None and on["z-low"]["dup_cluster_size"] == 1
    assert on["a0"]["dup_cluster"] == "a0" and on["a0"]["dup_cluster_size"] == 1
    assert (on["z-high"]["drop_reason"], on["z-high"]["drop_detail"]) == ("near_dup", "a1")
    assert details["verify_checked"] == 2 and details["verify_removed"] == 1, details
    assert details["docs_with_duplicates"] == 2 and details["clusters"] == 1 and details["cc_rounds"] == 1
