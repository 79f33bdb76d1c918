"""Marking contaminated documents in a Ray Dataset, for the `decontaminate` stage and for synth's check.

The index is built once, on the driver, and put in Ray's object store; each matching actor gets it from
there once (its NumPy arrays are read in place, the vocabulary and the automaton are unpickled per actor).
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline.stages.decontaminate.config import DecontaminateConfig
from pipeline.stages.decontaminate.index import BenchmarkIndex, load_index

logger = logging.getLogger(__name__)

REASON = "contaminated"  # drop_reason is 'contaminated:<benchmark>'
BATCH = 256  # documents per block and batch: every actor gets work, even from one input part


def mark(batch: pa.Table, index: BenchmarkIndex) -> pa.Table:
    """Set drop_reason `contaminated:<benchmark>` and drop_detail `item (how: 'span')` on documents not
    dropped yet; earlier drops pass through unchanged."""
    n = batch.num_rows
    reason = batch["drop_reason"] if "drop_reason" in batch.column_names else pa.nulls(n, pa.string())
    detail = batch["drop_detail"] if "drop_detail" in batch.column_names else pa.nulls(n, pa.string())
    live = pc.is_null(reason).to_pylist()
    hits = [index.find(t or "") if ok else None for t, ok in zip(batch["text"].to_pylist(), live)]
    hit = pa.array([h is not None for h in hits])
    reason = pc.if_else(hit, pa.array([h and f"{REASON}:{h.benchmark}" for h in hits], pa.string()), reason)
    detail = pc.if_else(hit, pa.array([h and h.detail() for h in hits], pa.string()), detail)
    for name, col in (("drop_reason", reason), ("drop_detail", detail)):
        if name in batch.column_names:
            batch = batch.drop_columns([name])
        batch = batch.append_column(name, col)
    return batch


class _Matcher:
    """One actor: takes the index from the object store once, then marks batch after batch."""

    def __init__(self, boxed: list):
        self.index = ray.get(boxed[0])  # boxed: a ref inside a list reaches the actor as a ref

    def __call__(self, batch: pa.Table) -> pa.Table:
        return mark(batch, self.index)


def decontaminate(ds: "ray.data.Dataset", cfg: DecontaminateConfig, index: BenchmarkIndex | None = None):
    """A Ray Dataset of the same documents with `contaminated:<benchmark>` drops marked."""
    index = index or load_index(cfg)
    ref = ray.put(index)
    total = ray.cluster_resources().get("CPU", 1)
    workers = cfg.workers or max(1, int(total))
    # Actors hold their CPUs for the whole stage: leave one free for the tasks that read the input, or the
    # pool waits on a read that never starts (seen on 2 CPUs; annotate does the same).
    return ds.repartition(target_num_rows_per_block=BATCH).map_batches(
        _Matcher,
        fn_constructor_args=([ref],),
        batch_size=BATCH,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=min(1.0, max(0.1, (total - 1) / workers)),
    )


def summarize(rows: list[dict], index: BenchmarkIndex, examples: int) -> dict:
    """contamination.json: per benchmark, the items found, documents dropped by source, and examples.
    `rows` are the contaminated documents' id, source, drop_reason and drop_detail."""
    out: dict = {}
    for name, items in index.counts.items():
        out[name] = {"items": items, "items_found": 0, "docs_dropped": 0, "by_source": {}, "examples": []}
    found: dict[str, set[str]] = {name: set() for name in out}
    for r in sorted(rows, key=lambda r: str(r.get("id"))):
        name = r["drop_reason"].split(":", 1)[1]
        b = out[name]
        b["docs_dropped"] += 1
        source = r.get("source") or "(none)"
        b["by_source"][source] = b["by_source"].get(source, 0) + 1
        item = r["drop_detail"].split(" (", 1)[0]
        found[name].add(item)
        if len(b["examples"]) < examples:
            b["examples"].append({"doc": r.get("id"), "source": source, "match": r["drop_detail"]})
    for name, items in found.items():
        out[name]["items_found"] = len(items)
        out[name]["found_share"] = round(len(items) / max(1, out[name]["items"]), 6)
    return out
