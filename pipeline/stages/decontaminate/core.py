"""Marking contaminated documents part by part, for the `decontaminate` stage and for synth's check.

The index is built once, on the driver, and put in Ray's object store; each worker takes it from there
once (`marker`: its NumPy arrays are read in place, the vocabulary and the automaton unpickled per
worker) and marks part after part. What the report needs comes back per part as a small summary
(`part_summary`: counts, the items found, at most `examples` documents) merged on the driver (`merge`).
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.stages.decontaminate.index import BenchmarkIndex

logger = logging.getLogger(__name__)

REASON = "contaminated"  # drop_reason is 'contaminated:<benchmark>'


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


def cpus_per_actor(workers: int) -> float:
    """One CPU each, but leave one CPU of the cluster free: actors hold their CPUs for the whole stage, and
    Ray Data's own tasks need one, or the pool waits on a task that never starts (seen on 2 CPUs)."""
    import ray

    total = ray.cluster_resources().get("CPU", 1)
    return min(1.0, max(0.1, (total - 1) / workers))


def part_summary(batch: pa.Table, into: dict, examples: int) -> dict:
    """Add a marked batch's contaminated documents to `into`, a part's summary: per benchmark the
    documents dropped, by source, the set of item ids found (at most the benchmark's items) and the
    `examples` documents with the smallest ids. Bounded whatever the part's size; merged by `merge`."""
    reason = batch["drop_reason"]
    hit = pc.fill_null(pc.starts_with(reason, REASON + ":"), False)
    if not pc.any(hit).as_py():
        return into
    cols = [c for c in ("id", "source", "drop_reason", "drop_detail") if c in batch.column_names]
    for r in batch.filter(hit).select(cols).to_pylist():
        b = into.setdefault(
            r["drop_reason"].split(":", 1)[1],
            {"docs_dropped": 0, "by_source": {}, "items": set(), "examples": []},
        )
        b["docs_dropped"] += 1
        source = r.get("source") or "(none)"
        b["by_source"][source] = b["by_source"].get(source, 0) + 1
        b["items"].add(r["drop_detail"].split(" (", 1)[0])
        b["examples"] = _first(
            b["examples"] + [{"doc": r.get("id"), "source": source, "match": r["drop_detail"]}], examples
        )
    return into


def _first(examples: list[dict], k: int) -> list[dict]:
    return sorted(examples, key=lambda e: str(e["doc"]))[:k]


def merge(summaries: list[dict], items: dict[str, int], examples: int) -> dict:
    """contamination.json's `benchmarks` from the parts' summaries: per benchmark, the items found, the
    documents dropped by source and the `examples` documents with the smallest ids (as one sorted pass
    over every document would pick them)."""
    out: dict = {}
    found: dict[str, set[str]] = {}
    for name, n in items.items():
        out[name] = {"items": n, "items_found": 0, "docs_dropped": 0, "by_source": {}, "examples": []}
        found[name] = set()
    for summary in summaries:
        for name, s in summary.items():
            b = out[name]
            b["docs_dropped"] += s["docs_dropped"]
            for source, n in s["by_source"].items():
                b["by_source"][source] = b["by_source"].get(source, 0) + n
            found[name].update(s["items"])
            b["examples"] = _first(b["examples"] + s["examples"], examples)
    for name, b in out.items():
        b["by_source"] = dict(sorted(b["by_source"].items()))
        b["items_found"] = len(found[name])
        b["found_share"] = round(len(found[name]) / max(1, b["items"]), 6)
    return out


def marker(boxed: list, examples: int):
    """A parts `factory` (pipeline/parts.py): takes the index from the object store once per worker
    (`boxed`: a ref inside a list, so that Ray passes the ref, not the index) and marks part after part,
    leaving each part's summary in its `stats["contamination"]`."""
    import ray

    from pipeline.parts import read_part

    index = ray.get(boxed[0])

    def process(spec: dict, stats: dict):
        summary: dict = {}
        for table in read_part(spec):
            table = mark(table, index)
            part_summary(table, summary, examples)
            yield table
        stats["contamination"] = {k: {**b, "items": sorted(b["items"])} for k, b in summary.items()}

    return process
