"""dedup_dataset: exact then MinHash-LSH near-duplicate removal over a Ray Dataset.

1. keys (map_batches): per document its rank (keep order), then one row for the hash of its normalized
   text and one per LSH band key of its MinHash signature; the text is not carried further.
2. buckets (one Ray shuffle, lsh.py): rows grouped by key; a bucket with more than one document gives
   star edges to its first document.
3. clusters (components.py): connected components of the edges; root = first document in keep order.
4. assign (map_batches over the documents, order preserved): each document is looked up in the table of
   documents that have a duplicate and gets drop_reason/drop_detail, dup_cluster, dup_cluster_size.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline.dedup import components, lsh
from pipeline.dedup.minhash import band_keys, exact_key, id_of_rank, rank_keys, signatures

if TYPE_CHECKING:
    from pipeline.stages.dedup import DedupConfig

ROWS_PER_PARTITION = 1_000_000  # key rows one map_groups call holds at most (about 100 MB)
OUT_COLUMNS = ("dup_cluster", "dup_cluster_size", "drop_reason", "drop_detail")


def _live(batch: pa.Table) -> pa.Table:
    """Documents still in play: an earlier drop (e.g. a synth post-filter) is left as it is."""
    if "drop_reason" in batch.column_names:
        return batch.filter(pc.is_null(batch["drop_reason"]))
    return batch


def _ranks(batch: pa.Table, cfg: "DedupConfig", reference: bool) -> list[str]:
    scores = batch[cfg.score_column] if cfg.score_column and cfg.score_column in batch.column_names else None
    return rank_keys(batch["id"].combine_chunks(), scores, reference)


def _key_rows(batch: pa.Table, cfg: "DedupConfig", reference: bool, partitions: int) -> pa.Table:
    batch = _live(batch)
    texts = pc.fill_null(batch["text"], "").to_pylist()
    exact = [exact_key(t) for t in texts] if cfg.exact else None
    bands = has_words = None
    if cfg.fuzzy:
        sig, has_words = signatures(texts, cfg.ngram, cfg.num_perm, cfg.seed)
        bands = band_keys(sig, *cfg.bands_rows())
    return lsh.key_rows(_ranks(batch, cfg, reference), exact, bands, has_words, partitions)


def _assign(batch: pa.Table, cfg: "DedupConfig", edges: ray.ObjectRef, clusters: ray.ObjectRef) -> pa.Table:
    exact, clusters = ray.get([edges, clusters])  # Ray Data hands fn_kwargs over without resolving them
    reason = batch["drop_reason"].to_pylist() if "drop_reason" in batch.column_names else [None] * batch.num_rows
    detail = batch["drop_detail"].to_pylist() if "drop_detail" in batch.column_names else [None] * batch.num_rows
    ranks = pa.array(_ranks(batch, cfg, reference=False), pa.string())
    ei = pc.index_in(ranks, value_set=exact["a"]).to_pylist()
    ci = pc.index_in(ranks, value_set=clusters["rank"]).to_pylist()
    e_rep = exact["b"].to_pylist()
    c_root, c_size = clusters["root"].to_pylist(), clusters["size"].to_pylist()
    ids = batch["id"].to_pylist()
    cluster: list[str | None] = []
    size: list[int | None] = []
    for j, rank in enumerate(ranks.to_pylist()):
        if reason[j] is not None:  # dropped before dedup
            cluster.append(None)
            size.append(None)
            continue
        if ei[j] is not None and e_rep[ei[j]] != rank:
            reason[j], detail[j] = "exact_dup", id_of_rank(e_rep[ei[j]])
        elif ci[j] is not None and c_root[ci[j]] != rank:
            reason[j], detail[j] = "near_dup", id_of_rank(c_root[ci[j]])
        cluster.append(ids[j] if ci[j] is None else id_of_rank(c_root[ci[j]]))
        size.append(1 if ci[j] is None else c_size[ci[j]])
    batch = batch.drop_columns([c for c in OUT_COLUMNS if c in batch.column_names])
    for name, values, typ in zip(OUT_COLUMNS, (cluster, size, reason, detail), (pa.string(), pa.int64(), pa.string(), pa.string())):
        batch = batch.append_column(name, pa.array(values, typ))
    return batch


def _gather(ds: "ray.data.Dataset") -> pa.Table:
    """The edges, concatenated on the driver: only documents with a candidate duplicate have any."""
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables).cast(lsh.EDGE_SCHEMA) if tables else lsh.EDGE_SCHEMA.empty_table()


def dedup_dataset(
    ds: "ray.data.Dataset", cfg: "DedupConfig", reference: "ray.data.Dataset | None" = None
) -> tuple["ray.data.Dataset", dict]:
    """Mark exact and near duplicates in `ds`; return (every document of `ds` with drop_reason,
    drop_detail, dup_cluster, dup_cluster_size added; figures for the stage record).

    Documents of `reference` (e.g. the kept web documents, when deduplicating synthetic text) always win
    and are not returned: a `ds` document that duplicates one of them, or another `ds` document, is
    dropped. Documents of `ds` that already have a drop_reason pass through unchanged. The kept document
    of a cluster is the one with the highest `cfg.score_column` (when that column exists), then the
    smallest id; `drop_detail` of an `exact_dup` is the id of its exact copy that was kept over it, of a
    `near_dup` the id of its cluster's kept document (`dup_cluster`)."""
    rows_per_doc = (1 if cfg.exact else 0) + (cfg.bands_rows()[0] if cfg.fuzzy else 0)
    parts = cfg.partitions
    if parts is None:
        docs = ds.count() + (reference.count() if reference is not None else 0)
        parts = max(int(ray.cluster_resources().get("CPU", 1)), math.ceil(docs * rows_per_doc / ROWS_PER_PARTITION))
    keys = ds.map_batches(_key_rows, batch_format="pyarrow", fn_kwargs={"cfg": cfg, "reference": False, "partitions": parts})
    if reference is not None:
        keys = keys.union(
            reference.map_batches(_key_rows, batch_format="pyarrow", fn_kwargs={"cfg": cfg, "reference": True, "partitions": parts})
        )
    edges = _gather(keys.groupby("part").map_groups(lsh.bucket_edges, batch_format="pyarrow"))
    clusters = components.clusters(edges)
    exact = edges.filter(edges["exact"])
    out = ds.map_batches(
        _assign, batch_format="pyarrow", fn_kwargs={"cfg": cfg, "edges": ray.put(exact), "clusters": ray.put(clusters)}
    )
    details = {
        "shuffle_partitions": parts,
        "candidate_edges": edges.num_rows,
        "docs_with_duplicates": clusters.num_rows,
        "clusters": len(pc.unique(clusters["root"])) if clusters.num_rows else 0,
    }
    if cfg.fuzzy:
        b, r = cfg.bands_rows()
        details.update({"ngram": cfg.ngram, "num_perm": cfg.num_perm, "bands": b, "rows": r})
    return out, details
