"""Bucketing on Ray: documents that share a key (exact-text hash or LSH band key) become candidate pairs.

Every document gives one row per key: its exact-text hash and one key per band. Rows are spread over
`partitions` by their key (shuffle.py), so one call sees every row of each key it holds and groups them
with pyarrow's vectorized `group_by`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.stages.dedup.shuffle import PART

EDGE_SCHEMA = pa.schema([("a", pa.string()), ("b", pa.string()), ("exact", pa.bool_())])


def key_rows(
    ranks: list[str],
    exact: list[bytes] | None,
    bands: np.ndarray | None,
    has_words: np.ndarray,
    partitions: int,
) -> pa.Table:
    """(PART, key, rank, exact) rows: one per document for its exact hash (16 bytes), one per band for
    documents with words (8-byte band key)."""
    keys: list[bytes] = []
    rank: list[str] = []
    flag: list[bool] = []
    if exact is not None:
        keys += exact
        rank += ranks
        flag += [True] * len(ranks)
    if bands is not None:
        rows = bands[has_words]
        keep = [r for r, ok in zip(ranks, has_words) if ok]
        keys += [k.to_bytes(8, "little") for k in rows.ravel().tolist()]
        rank += [r for r in keep for _ in range(rows.shape[1])]
        flag += [False] * rows.size
    part = [int.from_bytes(k[:8], "little") % partitions for k in keys]
    return pa.table(
        {
            PART: pa.array(part, pa.int64()),
            "key": pa.array(keys, pa.binary()),
            "rank": pa.array(rank, pa.string()),
            "exact": pa.array(flag, pa.bool_()),
        }
    )


def bucket_edges(rows: pa.Table) -> pa.Table:
    """Candidate pairs of the buckets that hold more than one document, as a star per bucket: (a, b) with b
    the bucket's first document in keep order, including (b, b) so that exact groups keep their
    representative. Buckets are per (key, exact), so a band key never meets an exact hash."""
    g = rows.group_by(["key", "exact"]).aggregate([("rank", "min"), ("rank", "count")])
    g = g.filter(pc.greater(g["rank_count"], 1)).select(["key", "exact", "rank_min"])
    t = rows.select(["key", "exact", "rank"]).join(g, ["key", "exact"], join_type="inner")
    out = pa.table({"a": t["rank"], "b": t["rank_min"], "exact": t["exact"]})
    return out.group_by(["a", "b", "exact"]).aggregate([]).cast(EDGE_SCHEMA)
