"""dedup_dataset: exact then MinHash-LSH near-duplicate removal over a Ray Dataset.

Documents, edges and clusters are never gathered on the driver, which only receives counts (one small dict
per task). Every global step is a hash-partitioned shuffle through files in the stage's work directory
(shuffle.py), so memory per task is bounded by a partition, not by the corpus, and each step is committed
(steps.py): a rerun after a kill reuses the committed steps and redoes only the rest.

1. keys (map_batches over the documents): per document its rank (keep order), then one row for the hash
   of its normalized text and one per LSH band key of its MinHash signature, spread by key; the documents
   themselves (with their rank) spread by rank, for step 5. The only pass over the input.
2. edges (by key, lsh.py): a bucket with more than one document gives star edges to its first document.
3. verify (only with `verify_threshold`; two shuffles by node): each distinct near-duplicate pair meets
   the texts of its two documents and is dropped when the true Jaccard similarity of their word n-gram
   shingle sets is below the threshold. Exact pairs are not checked.
4. clusters (components.py): connected components by large-star/small-star rounds (each shuffle its own
   step); root = the smallest rank of the component, i.e. the document kept.
5. assign (by rank): each document meets its node row (root, size) and exact-copy row, if any, and gets
   drop_reason/drop_detail, dup_cluster, dup_cluster_size. Row order is not kept.

The joins of steps 3 and 5 are partition-local pyarrow joins rather than `Dataset.join`, which needs
polars (not a dependency here).
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline import storage
from pipeline.stages.dedup import components, lsh
from pipeline.stages.dedup.minhash import RANK_PREFIX, band_keys, exact_key, rank_keys, shingles, signatures
from pipeline.stages.dedup.shuffle import PART, files, gather, name_of, part_of, scatter, scatter_table
from pipeline.stages.dedup.steps import STEPS, Steps

if TYPE_CHECKING:
    from pipeline.stages.dedup.config import DedupConfig

ROWS_PER_PARTITION = 1_000_000  # key rows one shuffle partition holds at most (about 100 MB)
# Documents per keys task: each writes one file per partition it has rows for, so larger batches mean
# fewer files (and tasks) per step; about 15 key rows per document.
KEY_BATCH_ROWS = 16_384
OUT_COLUMNS = ("dup_cluster", "dup_cluster_size", "drop_reason", "drop_detail")
RANK, ROOT, SIZE, EXACT = "_dedup_rank", "_dedup_root", "_dedup_size", "_dedup_exact"
KEY_SCHEMA = pa.schema([("key", pa.binary()), ("rank", pa.string()), ("exact", pa.bool_())])
TEXT_SCHEMA = pa.schema([("rank", pa.string()), ("text", pa.large_string())])
PAIR_SCHEMA = pa.schema([("a", pa.string()), ("b", pa.string())])
PAIR_TEXT_SCHEMA = pa.schema([("a", pa.string()), ("b", pa.string()), ("text", pa.large_string())])
NODE_SCHEMA = pa.schema([(RANK, pa.string()), (ROOT, pa.string()), (SIZE, pa.int64())])
EXACT_SCHEMA = pa.schema([(RANK, pa.string()), (EXACT, pa.string())])


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
    """`t` with exactly `schema`'s columns (missing ones null): every file of a partition has one schema."""
    cols = [
        t[f.name].cast(f.type) if f.name in t.column_names else pa.nulls(t.num_rows, f.type) for f in schema
    ]
    return pa.Table.from_arrays(cols, schema=schema)


# ---- keys ----


def _key_task(
    batch: pa.Table, cfg: "DedupConfig", reference: bool, partitions: int, out: str, schema: pa.Schema
) -> pa.Table:
    """Writes this batch's key rows (by key), its documents (by rank; not for reference documents) and,
    for verification, its texts (by rank); returns one row of counts."""
    rank = _ranks(batch, cfg, reference)
    name = ("r" if reference else "d") + name_of(rank)
    if not reference:
        docs = _conform(batch, schema).append_column(RANK, rank)
        scatter_table(docs.append_column(PART, part_of(rank, partitions)), storage.join(out, "doc"), name)
    live = _live(batch.append_column(RANK, rank))
    texts = pc.fill_null(live["text"], "")
    if cfg.verify_threshold is not None:
        t = pa.table({PART: part_of(live[RANK], partitions), "rank": live[RANK], "text": texts})
        scatter_table(
            t.cast(pa.schema([pa.field(PART, pa.int64()), *TEXT_SCHEMA])), storage.join(out, "text"), name
        )
    texts = texts.to_pylist()
    exact = [exact_key(t) for t in texts] if cfg.exact else None
    bands = has_words = None
    if cfg.fuzzy:
        sig, has_words = signatures(texts, cfg.ngram, cfg.num_perm, cfg.seed)
        bands = band_keys(sig, *cfg.bands_rows())
    keys = lsh.key_rows(live[RANK].to_pylist(), exact, bands, has_words, partitions)
    rows = scatter_table(keys, storage.join(out, "key"), name)
    return pa.table({"docs": [0 if reference else batch.num_rows], "key_rows": [rows]})


def _keys(
    ds: "ray.data.Dataset",
    reference: "ray.data.Dataset | None",
    cfg: "DedupConfig",
    parts: int,
    out: str,
    schema: pa.Schema,
) -> dict[str, int]:
    total = {"docs": 0, "key_rows": 0}
    for data, is_ref in ((ds, False), (reference, True)):
        if data is None:
            continue
        kw = {"cfg": cfg, "reference": is_ref, "partitions": parts, "out": out, "schema": schema}
        counts = data.map_batches(_key_task, batch_format="pyarrow", batch_size=KEY_BATCH_ROWS, fn_kwargs=kw)
        for row in counts.iter_rows():
            total["docs"] += row["docs"]
            total["key_rows"] += row["key_rows"]
    return total


# ---- edges ----


def _pairs(edges: pa.Table, exact: bool | None) -> pa.Table:
    """Edges between two documents (star edges include the bucket's first document with itself); all of
    them, or only the exact or only the near ones."""
    keep = pc.not_equal(edges["a"], edges["b"])
    if exact is not None:
        keep = pc.and_(keep, edges["exact"] if exact else pc.invert(edges["exact"]))
    return edges.filter(keep).select(["a", "b"])


def _bucket_step(rows: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    edges = lsh.bucket_edges(rows)
    pairs = pc.not_equal(edges["a"], edges["b"])
    exact = pc.sum(pc.and_(pairs, edges["exact"])).as_py() or 0
    return edges, {"exact_pairs": exact, "near_pairs": (pc.sum(pairs).as_py() or 0) - exact}


# ---- verify ----


def _near_rows(t: pa.Table, partitions: int) -> pa.Table:
    t = _pairs(t, exact=False)
    return t.append_column(PART, part_of(t["a"], partitions))


def _by_b(t: pa.Table, partitions: int) -> pa.Table:
    return t.append_column(PART, part_of(t["b"], partitions))


def _with_text_a(pairs: pa.Table, texts: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    """The distinct pairs of this partition (by a) with a's text."""
    pairs = pairs.group_by(["a", "b"]).aggregate([])
    text = pc.take(texts["text"], pc.index_in(pairs["a"], value_set=texts["rank"].combine_chunks()))
    return pa.table({"a": pairs["a"], "b": pairs["b"], "text": text}, schema=PAIR_TEXT_SCHEMA), {}


def _check(pairs: pa.Table, texts: pa.Table, ngram: int, threshold: float) -> tuple[pa.Table, dict]:
    """(a, b, keep) for the pairs of this partition (by b): keep when the Jaccard similarity of the two
    documents' shingle sets reaches `threshold`."""
    text_b = pc.take(texts["text"], pc.index_in(pairs["b"], value_set=texts["rank"].combine_chunks()))
    sets: dict[str, set[bytes]] = {}  # a document meets several partners here: shingle it once
    keep = []
    for a, b, ta, tb in zip(
        pairs["a"].to_pylist(), pairs["b"].to_pylist(), pairs["text"].to_pylist(), text_b.to_pylist()
    ):
        sa = sets[a] if a in sets else sets.setdefault(a, shingles(ta, ngram))
        sb = sets[b] if b in sets else sets.setdefault(b, shingles(tb, ngram))
        keep.append(len(sa & sb) >= threshold * len(sa | sb))
    out = pa.table({"a": pairs["a"], "b": pairs["b"], "keep": pa.array(keep, pa.bool_())})
    return out, {"kept": sum(keep)}


def _kept_pairs(t: pa.Table) -> pa.Table:
    return t.filter(t["keep"]).select(["a", "b"])


def _verify(steps: Steps, edges: list[str], cfg: "DedupConfig", parts: int) -> tuple[list[str], dict]:
    """Files of the near pairs with their keep flag, and how many were checked and removed."""
    texts = (steps.dir("keys", "text"), TEXT_SCHEMA)

    def texts_a(d: str) -> dict[str, int]:
        scatter([(f, _near_rows, {}) for f in edges], parts, storage.join(d, "in"))
        inputs = {"pairs": (storage.join(d, "in"), PAIR_SCHEMA), "texts": texts}
        return gather(parts, inputs, _with_text_a, storage.join(d, "out"))

    def check(d: str) -> dict[str, int]:
        scatter([(f, _by_b, {}) for f in files(steps.dir("verify-a", "out"))], parts, storage.join(d, "in"))
        inputs = {"pairs": (storage.join(d, "in"), PAIR_TEXT_SCHEMA), "texts": texts}
        return gather(
            parts, inputs, _check, storage.join(d, "out"), ngram=cfg.ngram, threshold=cfg.verify_threshold
        )

    steps.run("verify-a", texts_a)
    counts = steps.run("verify", check)
    checked = counts.get("rows", 0)
    return files(steps.dir("verify", "out")), {
        "verify_checked": checked,
        "verify_removed": checked - counts.get("kept", 0),
    }


# ---- assign ----


def _node_rows(t: pa.Table, partitions: int) -> pa.Table:
    """(rank, root, size) rows of the clusters, partitioned like the documents."""
    return pa.table({PART: part_of(t["rank"], partitions), RANK: t["rank"], ROOT: t["root"], SIZE: t["size"]})


def _exact_rows(edges: pa.Table, partitions: int) -> pa.Table:
    """(rank, rank of its exact copy kept over it) rows, partitioned like the documents."""
    t = _pairs(edges, exact=True)
    return pa.table({PART: part_of(t["a"], partitions), RANK: t["a"], EXACT: t["b"]})


def _assign(docs: pa.Table, nodes: pa.Table, exact: pa.Table) -> tuple[pa.Table, dict]:
    """The documents of this partition with their outcome. A document with a drop_reason keeps it."""
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
    docs = docs.drop_columns([c for c in docs.column_names if c in OUT_COLUMNS or c == RANK])
    for name, values in out.items():
        docs = docs.append_column(name, values)
    # by id: the rows arrive in an order that depends on how the input was batched
    return docs.take(pc.sort_indices(docs["id"])), {}


def _doc_schema(ds: "ray.data.Dataset") -> pa.Schema:
    """The documents' columns, all nullable (blocks differ in that), without those the assign step sets."""
    names = set(OUT_COLUMNS) - {"drop_reason", "drop_detail"}
    return pa.schema([f.with_nullable(True) for f in ds.schema().base_schema if f.name not in names | {RANK}])


def dedup_dataset(
    ds: "ray.data.Dataset",
    cfg: "DedupConfig",
    work_dir: str,
    reference: "ray.data.Dataset | None" = None,
    num_docs: int | None = None,
    num_reference: int | None = None,
) -> tuple["ray.data.Dataset", dict]:
    """`dedup_files` read back as one Dataset: for callers that go on computing (synth, tests, benches)."""
    out_dir, details = dedup_files(ds, cfg, work_dir, reference, num_docs, num_reference)
    return ray.data.read_parquet(files(out_dir)), details


def dedup_files(
    ds: "ray.data.Dataset",
    cfg: "DedupConfig",
    work_dir: str,
    reference: "ray.data.Dataset | None" = None,
    num_docs: int | None = None,
    num_reference: int | None = None,
) -> tuple[str, dict]:
    """Mark exact and near duplicates in `ds`; return (the directory of Parquet files, one per shuffle
    partition, that hold every document of `ds` with drop_reason, drop_detail, dup_cluster and
    dup_cluster_size added, each file ordered by id; figures for the stage record).

    Documents of `reference` (e.g. the kept web documents, when deduplicating synthetic text) always win
    and are not returned: a `ds` document that duplicates one of them, or another `ds` document, is
    dropped. Documents of `ds` that already have a drop_reason pass through unchanged. The kept document
    of a cluster is the one with the highest `cfg.score_column` (when that column exists), then the
    smallest id; `drop_detail` of an `exact_dup` is the id of its exact copy that was kept over it, of a
    `near_dup` the id of its cluster's kept document (`dup_cluster`).

    The steps write their tables under `work_dir` (which must be reachable from every Ray worker: shared
    storage on a cluster) and commit them one by one; a call with the same documents, settings and
    `work_dir` reuses every committed step (listed under `steps_reused` in the figures). `num_docs` and
    `num_reference`, the numbers of documents in `ds` and `reference` when the caller knows them, set the
    number of partitions without a pass over each to count them."""
    key = hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]
    steps = Steps(work_dir, key)
    schema = functools.cache(lambda: _doc_schema(ds))

    def keys(d: str) -> dict[str, int]:
        rows_per_doc = (1 if cfg.exact else 0) + (cfg.bands_rows()[0] if cfg.fuzzy else 0)
        docs = ds.count() if num_docs is None else num_docs
        if reference is not None:
            docs += reference.count() if num_reference is None else num_reference
        parts = cfg.partitions or max(
            int(ray.cluster_resources().get("CPU", 1)), math.ceil(docs * rows_per_doc / ROWS_PER_PARTITION)
        )
        return {"partitions": parts, **_keys(ds, reference, cfg, parts, d, schema())}

    counts = steps.run("keys", keys)
    parts = counts["partitions"]
    edges_counts = steps.run(
        "edges",
        lambda d: gather(parts, {"rows": (steps.dir("keys", "key"), KEY_SCHEMA)}, _bucket_step, d),
    )
    edges = files(steps.dir("edges"))
    details = {"shuffle_partitions": parts, "candidate_edges": edges_counts.get("rows", 0)}
    graph = [(f, functools.partial(_pairs, exact=None)) for f in edges]
    if cfg.verify_threshold is not None:
        checked = {"verify_checked": 0, "verify_removed": 0}
        graph = [(f, functools.partial(_pairs, exact=True)) for f in edges]
        if edges_counts.get("near_pairs"):
            near, checked = _verify(steps, edges, cfg, parts)
            graph += [(f, _kept_pairs) for f in near]
        details.update(checked)
    if edges_counts.get("exact_pairs", 0) + edges_counts.get("near_pairs", 0):
        nodes, figures = components.clusters(steps, graph, parts)
    else:  # no document has a duplicate: no components to find
        nodes, figures = [], {"docs_with_duplicates": 0, "clusters": 0, "cc_rounds": 0}
    details.update(figures)

    def assign(d: str) -> dict[str, int]:
        scatter([(f, _node_rows, {}) for f in nodes], parts, storage.join(d, "nodes"))
        scatter([(f, _exact_rows, {}) for f in edges], parts, storage.join(d, "exact"))
        inputs = {
            "docs": (steps.dir("keys", "doc"), schema().append(pa.field(RANK, pa.string()))),
            "nodes": (storage.join(d, "nodes"), NODE_SCHEMA),
            "exact": (storage.join(d, "exact"), EXACT_SCHEMA),
        }
        return gather(parts, inputs, _assign, storage.join(d, "out"))

    steps.run("assign", assign)
    if cfg.fuzzy:
        b, r = cfg.bands_rows()
        details.update({"ngram": cfg.ngram, "num_perm": cfg.num_perm, "bands": b, "rows": r})
    details["steps"] = steps.done
    details["steps_reused"] = steps.reused
    return steps.dir("assign", "out"), details


def remove_steps(work_dir: str, order: list[str]) -> None:
    """The steps' files and records: scratch once the output made from them is committed. The records go
    first, in step order: a kill midway leaves no record whose files are gone (a rerun that finds the
    first step's record missing recomputes every step)."""
    root = storage.join(work_dir, STEPS)
    for step in order:
        storage.remove_file(storage.join(root, f"{step}.json"))
    storage.remove_dir(root)
