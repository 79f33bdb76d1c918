"""dedup_dataset: exact then MinHash-LSH near-duplicate removal over a Ray Dataset.

Every step is a Ray Dataset operation and every table a Dataset: documents, edges and clusters are never
gathered on the driver, which only receives counts (one small row per block). Shuffles are by hash
partition (shuffle.py), so memory is bounded by a partition, not by the corpus.

1. keys (map_batches): per document its rank (keep order), then one row for the hash of its normalized
   text and one per LSH band key of its MinHash signature; the text is not carried further.
2. buckets (shuffle by key, lsh.py): a bucket with more than one document gives star edges to its first
   document.
3. verify (only with `verify_threshold`; two shuffles by node): each distinct near-duplicate pair meets
   the texts of its two documents and is dropped when the true Jaccard similarity of their word n-gram
   shingle sets is below the threshold. Exact pairs are not checked.
4. clusters (components.py): connected components by large-star/small-star rounds; root = the smallest
   rank of the component, i.e. the document kept.
5. assign (one shuffle by rank): each document meets its node row (root, size) and exact-copy row, if
   any, and gets drop_reason/drop_detail, dup_cluster, dup_cluster_size. Row order is not kept.

The joins of steps 3 and 5 are hash-partitioned `groupby`s over a union of both sides rather than
`Dataset.join`, which needs polars (not a dependency here).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline.stages.dedup import components, lsh
from pipeline.stages.dedup.minhash import RANK_PREFIX, band_keys, exact_key, rank_keys, shingles, signatures
from pipeline.stages.dedup.shuffle import PART, by_part, part_of, tally

if TYPE_CHECKING:
    from pipeline.stages.dedup.config import DedupConfig

ROWS_PER_PARTITION = 1_000_000  # key rows one shuffle partition holds at most (about 100 MB)
OUT_COLUMNS = ("dup_cluster", "dup_cluster_size", "drop_reason", "drop_detail")
# Columns the assign shuffle adds to the documents; node rows fill ROOT/SIZE, exact-copy rows EXACT.
RANK, ROOT, SIZE, EXACT = "_dedup_rank", "_dedup_root", "_dedup_size", "_dedup_exact"
ASSIGN_FIELDS = [
    pa.field(PART, pa.int64()),
    pa.field(RANK, pa.string()),
    pa.field(ROOT, pa.string()),
    pa.field(SIZE, pa.int64()),
    pa.field(EXACT, pa.string()),
]
# Pair rows (a, b) and text rows (a or b = rank, text) of the verify shuffles.
VERIFY_SCHEMA = pa.schema(
    [(PART, pa.int64()), ("a", pa.string()), ("b", pa.string()), ("text", pa.large_string())]
)


def _live(batch: pa.Table) -> pa.Table:
    """Documents still in play: an earlier drop (e.g. a synth post-filter) is left as it is."""
    if "drop_reason" in batch.column_names:
        return batch.filter(pc.is_null(batch["drop_reason"]))
    return batch


def _ranks(batch: pa.Table, cfg: "DedupConfig", reference: bool) -> pa.Array:
    scores = batch[cfg.score_column] if cfg.score_column and cfg.score_column in batch.column_names else None
    return pa.array(rank_keys(batch["id"].combine_chunks(), scores, reference), pa.string())


def _id_of(ranks: pa.Array | pa.ChunkedArray) -> pa.Array:
    return pc.utf8_slice_codeunits(ranks, RANK_PREFIX)


def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """`t` with exactly `schema`'s columns (missing ones null): Ray's hash shuffle concatenates the pieces
    of a partition without unifying schemas, so every Dataset in one shuffle has the same schema."""
    cols = [
        t[f.name].cast(f.type) if f.name in t.column_names else pa.nulls(t.num_rows, f.type) for f in schema
    ]
    return pa.Table.from_arrays(cols, schema=schema)


def _key_rows(batch: pa.Table, cfg: "DedupConfig", reference: bool, partitions: int) -> pa.Table:
    batch = _live(batch)
    texts = pc.fill_null(batch["text"], "").to_pylist()
    exact = [exact_key(t) for t in texts] if cfg.exact else None
    bands = has_words = None
    if cfg.fuzzy:
        sig, has_words = signatures(texts, cfg.ngram, cfg.num_perm, cfg.seed)
        bands = band_keys(sig, *cfg.bands_rows())
    return lsh.key_rows(_ranks(batch, cfg, reference).to_pylist(), exact, bands, has_words, partitions)


def _pairs(edges: pa.Table, exact: bool | None) -> pa.Table:
    """Edges between two documents (star edges include the bucket's first document with itself); all of
    them, or only the exact or only the near ones."""
    keep = pc.not_equal(edges["a"], edges["b"])
    if exact is not None:
        keep = pc.and_(keep, edges["exact"] if exact else pc.invert(edges["exact"]))
    return edges.filter(keep).select(["a", "b"])


# ---- verify ----


def _text_rows(batch: pa.Table, cfg: "DedupConfig", reference: bool, end: str, partitions: int) -> pa.Table:
    """(rank in column `end`, text) of the live documents, partitioned by rank."""
    batch = _live(batch)
    rank = _ranks(batch, cfg, reference)
    text = pc.fill_null(batch["text"], "")
    return _conform(pa.table({PART: part_of(rank, partitions), end: rank, "text": text}), VERIFY_SCHEMA)


def _pair_rows(t: pa.Table, partitions: int) -> pa.Table:
    return _conform(t.append_column(PART, part_of(t["a"], partitions)), VERIFY_SCHEMA)


def _with_text_a(t: pa.Table, partitions: int) -> pa.Table:
    """The distinct pairs of this partition (by a) with a's text, partitioned by b."""
    texts = t.filter(pc.is_null(t["b"]))
    pairs = t.filter(pc.is_valid(t["b"])).group_by(["a", "b"]).aggregate([])
    text = pc.take(texts["text"], pc.index_in(pairs["a"], value_set=texts["a"].combine_chunks()))
    return _conform(
        pa.table({PART: part_of(pairs["b"], partitions), "a": pairs["a"], "b": pairs["b"], "text": text}),
        VERIFY_SCHEMA,
    )


def _check(t: pa.Table, ngram: int, threshold: float) -> pa.Table:
    """(a, b, keep) for the pairs of this partition (by b): keep when the Jaccard similarity of the two
    documents' shingle sets reaches `threshold`."""
    texts = t.filter(pc.is_null(t["a"]))
    pairs = t.filter(pc.is_valid(t["a"]))
    text_b = pc.take(texts["text"], pc.index_in(pairs["b"], value_set=texts["b"].combine_chunks()))
    sets: dict[str, set[bytes]] = {}  # a document meets several partners here: shingle it once
    keep = []
    for a, b, ta, tb in zip(
        pairs["a"].to_pylist(), pairs["b"].to_pylist(), pairs["text"].to_pylist(), text_b.to_pylist()
    ):
        sa = sets[a] if a in sets else sets.setdefault(a, shingles(ta, ngram))
        sb = sets[b] if b in sets else sets.setdefault(b, shingles(tb, ngram))
        keep.append(len(sa & sb) >= threshold * len(sa | sb))
    return pa.table({"a": pairs["a"], "b": pairs["b"], "keep": pa.array(keep, pa.bool_())})


def _verify(
    near: "ray.data.Dataset",
    ds: "ray.data.Dataset",
    reference: "ray.data.Dataset | None",
    cfg: "DedupConfig",
    parts: int,
) -> tuple["ray.data.Dataset", dict[str, int]]:
    """The near pairs that pass verification, and how many were checked and removed."""

    def texts(end: str) -> "ray.data.Dataset":
        kw = {"cfg": cfg, "end": end, "partitions": parts}
        t = ds.map_batches(_text_rows, batch_format="pyarrow", fn_kwargs={**kw, "reference": False})
        if reference is not None:
            t = t.union(
                reference.map_batches(_text_rows, batch_format="pyarrow", fn_kwargs={**kw, "reference": True})
            )
        return t

    pairs = near.map_batches(_pair_rows, batch_format="pyarrow", fn_kwargs={"partitions": parts}).union(
        texts("a")
    )
    pairs = by_part(pairs, parts, _with_text_a, partitions=parts).union(texts("b"))
    checked = by_part(pairs, parts, _check, ngram=cfg.ngram, threshold=cfg.verify_threshold).materialize()
    counts = tally(checked, lambda t: {"checked": t.num_rows, "kept": pc.sum(t["keep"]).as_py() or 0})
    kept = checked.map_batches(lambda t: t.filter(t["keep"]).select(["a", "b"]), batch_format="pyarrow")
    return kept, {
        "verify_checked": counts.get("checked", 0),
        "verify_removed": counts.get("checked", 0) - counts.get("kept", 0),
    }


# ---- assign ----


def _doc_rows(batch: pa.Table, cfg: "DedupConfig", partitions: int, schema: pa.Schema) -> pa.Table:
    rank = _ranks(batch, cfg, reference=False)
    return _conform(batch.append_column(RANK, rank).append_column(PART, part_of(rank, partitions)), schema)


def _node_rows(t: pa.Table, partitions: int, schema: pa.Schema) -> pa.Table:
    """(rank, root, size) rows of the clusters, partitioned like the documents."""
    t = pa.table({PART: part_of(t["rank"], partitions), RANK: t["rank"], ROOT: t["root"], SIZE: t["size"]})
    return _conform(t, schema)


def _exact_rows(edges: pa.Table, partitions: int, schema: pa.Schema) -> pa.Table:
    """(rank, rank of its exact copy kept over it) rows, partitioned like the documents."""
    t = _pairs(edges, exact=True)
    return _conform(pa.table({PART: part_of(t["a"], partitions), RANK: t["a"], EXACT: t["b"]}), schema)


def _assign(t: pa.Table) -> pa.Table:
    """The documents of this partition with their outcome. A document with a drop_reason keeps it."""
    is_node, is_exact = pc.is_valid(t[ROOT]), pc.is_valid(t[EXACT])
    nodes, exact = t.filter(is_node), t.filter(is_exact)
    docs = t.filter(pc.invert(pc.or_(is_node, is_exact)))
    rank = docs[RANK]
    at = pc.index_in(rank, value_set=nodes[RANK].combine_chunks())
    root, size = pc.take(nodes[ROOT], at), pc.take(nodes[SIZE], at)
    rep = pc.take(exact[EXACT], pc.index_in(rank, value_set=exact[RANK].combine_chunks()))
    n = docs.num_rows
    prior = (
        docs["drop_reason"].cast(pa.string())
        if "drop_reason" in docs.column_names
        else pa.nulls(n, pa.string())
    )
    prior_detail = (
        docs["drop_detail"].cast(pa.string())
        if "drop_detail" in docs.column_names
        else pa.nulls(n, pa.string())
    )
    live = pc.is_null(prior)
    is_exact_dup = pc.and_(live, pc.is_valid(rep))  # exact rows only exist for a copy other than the kept one
    is_near_dup = pc.and_(
        pc.and_(live, pc.invert(is_exact_dup)), pc.fill_null(pc.not_equal(root, rank), False)
    )
    out = {
        "dup_cluster": pc.if_else(
            live, pc.coalesce(_id_of(root), docs["id"].cast(pa.string())), pa.scalar(None, pa.string())
        ),
        "dup_cluster_size": pc.if_else(
            live, pc.coalesce(size, pa.scalar(1, pa.int64())), pa.scalar(None, pa.int64())
        ),
        "drop_reason": pc.if_else(is_exact_dup, "exact_dup", pc.if_else(is_near_dup, "near_dup", prior)),
        "drop_detail": pc.if_else(
            is_exact_dup, _id_of(rep), pc.if_else(is_near_dup, _id_of(root), prior_detail)
        ),
    }
    docs = docs.drop_columns(
        [c for c in docs.column_names if c in OUT_COLUMNS or c in {f.name for f in ASSIGN_FIELDS}]
    )
    for name, values in out.items():
        docs = docs.append_column(name, values)
    return docs


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
        parts = max(
            int(ray.cluster_resources().get("CPU", 1)), math.ceil(docs * rows_per_doc / ROWS_PER_PARTITION)
        )
    keys = ds.map_batches(
        _key_rows, batch_format="pyarrow", fn_kwargs={"cfg": cfg, "reference": False, "partitions": parts}
    )
    if reference is not None:
        keys = keys.union(
            reference.map_batches(
                _key_rows,
                batch_format="pyarrow",
                fn_kwargs={"cfg": cfg, "reference": True, "partitions": parts},
            )
        )
    edges = by_part(keys, parts, lsh.bucket_edges).materialize()  # read three times below
    details = {"shuffle_partitions": parts, "candidate_edges": edges.count()}
    if cfg.verify_threshold is None:
        pairs = edges.map_batches(_pairs, batch_format="pyarrow", fn_kwargs={"exact": None})
    else:
        near = edges.map_batches(_pairs, batch_format="pyarrow", fn_kwargs={"exact": False}).materialize()
        pairs = edges.map_batches(_pairs, batch_format="pyarrow", fn_kwargs={"exact": True})
        if near.count():  # Ray's hash shuffle cannot partition a Dataset without a single row
            near, checked = _verify(near, ds, reference, cfg, parts)
            pairs = pairs.union(near)
        else:
            checked = {"verify_checked": 0, "verify_removed": 0}
        details.update(checked)
    clusters, rounds = components.clusters(pairs, parts)
    clusters = clusters.materialize()
    details.update(
        {
            "docs_with_duplicates": clusters.count(),
            "clusters": tally(
                clusters, lambda t: {"roots": pc.sum(pc.equal(t["rank"], t["root"])).as_py() or 0}
            ).get("roots", 0),
            "cc_rounds": rounds,
        }
    )
    base = [
        f.with_nullable(True)
        for f in ds.schema().base_schema
        if f.name not in {f.name for f in ASSIGN_FIELDS}
    ]
    schema = pa.schema(base + ASSIGN_FIELDS)
    docs = ds.map_batches(
        _doc_rows, batch_format="pyarrow", fn_kwargs={"cfg": cfg, "partitions": parts, "schema": schema}
    )
    if details["docs_with_duplicates"]:
        kw = {"partitions": parts, "schema": schema}
        nodes = clusters.map_batches(_node_rows, batch_format="pyarrow", fn_kwargs=kw)
        exact = edges.map_batches(_exact_rows, batch_format="pyarrow", fn_kwargs=kw)
        out = by_part(docs.union(nodes, exact), parts, _assign)
    else:  # no document has a duplicate: nothing to meet, no shuffle
        out = docs.map_batches(_assign, batch_format="pyarrow")
    if cfg.fuzzy:
        b, r = cfg.bands_rows()
        details.update({"ngram": cfg.ngram, "num_perm": cfg.num_perm, "bands": b, "rows": r})
    return out, details
