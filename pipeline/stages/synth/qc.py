"""Quality control of generated text, and how diverse it is.

The checks reuse the web path's pieces rather than copies of them: the signal columns of `annotate`
(pipeline.stages.annotate.signals: language ID, Gopher/C4/FineWeb values, edu_score) judged by select-style
rules (pipeline.stages.select.rules), then decontamination (pipeline.stages.decontaminate) and dedup
against the generations themselves and the web (pipeline.stages.dedup). A generation is dropped by the
first check it fails.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import storage
from pipeline.parts import DROPPED
from pipeline.stages.annotate.signals import annotate_table
from pipeline.stages.select import rules
from pipeline.stages.synth.config import QCConfig

DIVERSITY_SAMPLE = 2000  # documents the n-gram diversity is measured on (a deterministic sample)


def _set_drop(batch: pa.Table, reason: pa.ChunkedArray, detail: pa.ChunkedArray) -> pa.Table:
    """Fill drop_reason/drop_detail where they are still null (the first failing check wins)."""
    live = pc.is_null(batch["drop_reason"])
    new_reason = pc.if_else(live, reason, batch["drop_reason"])
    new_detail = pc.if_else(live, detail, batch["drop_detail"])
    batch = batch.drop_columns(["drop_reason", "drop_detail"])
    return batch.append_column("drop_reason", new_reason).append_column("drop_detail", new_detail)


def check(batch: pa.Table, cfg: QCConfig, annotate_cfg=None) -> pa.Table:
    """Length, truncation, then the signal rules; adds the signal columns. Runs in `map_batches`."""
    n = batch.num_rows
    words = pc.fill_null(pc.list_value_length(pc.utf8_split_whitespace(pc.fill_null(batch["text"], ""))), 0)
    short = pc.less(words, cfg.min_words)
    batch = _set_drop(
        batch,
        pc.if_else(short, "too_short", pa.nulls(n, pa.string())),
        pc.if_else(
            short,
            pc.binary_join_element_wise(pc.cast(words, pa.string()), f"words < {cfg.min_words}", " "),
            pa.nulls(n, pa.string()),
        ),
    )
    if cfg.drop_truncated:
        cut = pc.fill_null(pc.equal(batch["finish_reason"], "length"), False)
        batch = _set_drop(
            batch,
            pc.if_else(cut, "truncated", pa.nulls(n, pa.string())),
            pc.if_else(cut, "hit max_tokens", pa.nulls(n, pa.string())),
        )
    batch = annotate_table(batch, annotate_cfg)
    if cfg.filters is not None:
        active = rules.rules(cfg.filters)
        if (
            "edu_score" not in batch.column_names
        ):  # no classifier configured: that rule cannot run (the stage says so)
            active = [r for r in active if r.column != "edu_score"]
        reason, detail = rules.evaluate(batch, active)
        batch = _set_drop(batch, reason, detail)
    return batch


def distinct_ngram_ratio(texts: list[str], n: int = 4) -> float | None:
    """Distinct word n-grams over all word n-grams (distinct-n): near 1 for varied text, low for repetitive
    text."""
    total, seen = 0, set()
    for t in texts:
        w = t.split()
        grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return round(len(seen) / total, 4) if total else None


def _sampled(batch: pa.Table, share: float) -> pa.Table:
    """The documents whose id hashes below `share`: the same sample whatever the layout of the parts."""
    keys = [int(hashlib.sha1(i.encode()).hexdigest()[:8], 16) / 2**32 for i in batch["id"].to_pylist()]
    return batch.filter(pa.array([k < share for k in keys], pa.bool_()))


def _cells(batch: pa.Table) -> pa.Table:
    meta = [json.loads(m) for m in batch["meta"].to_pylist()]
    return pa.table({"audience": [m["audience"] for m in meta], "style": [m["style"] for m in meta]})


def _texts(ds, docs: int) -> list[str]:
    share = DIVERSITY_SAMPLE / max(1, docs)
    sample = ds.map_batches(_sampled, fn_args=(share,), batch_format="pyarrow") if share < 1 else ds
    return [r["text"] for r in sample.select_columns(["text"]).take_all() if r["text"]]


def diversity(prompts: list[dict], stage_dir: str, kept_docs: int) -> dict:
    """Cells covered by the prompts and by the kept documents, and distinct-4 of kept and of all
    generations, each over a sample of about DIVERSITY_SAMPLE documents (chosen by id hash), read from the
    stage's written parts: the driver gets one row per cell and the samples, never the whole output."""
    import ray

    kept_files = storage.list_files(stage_dir, suffix=".parquet")
    dropped_files = storage.list_files(storage.join(stage_dir, DROPPED), suffix=".parquet")
    kept = ray.data.read_parquet(kept_files, columns=["id", "text", "meta"])
    cells = []
    if kept_docs:
        by_cell = kept.map_batches(_cells, batch_format="pyarrow").groupby(["audience", "style"]).count()
        cells = by_cell.take_all()  # one row per audience x style cell
    every = kept.select_columns(["id", "text"])
    if dropped_files:
        every = every.union(ray.data.read_parquet(dropped_files, columns=["id", "text"]))
    return {
        "prompts": len(prompts),
        "seeds": len({p["seed_id"] for p in prompts}),
        "audience_style_cells": len({(p["audience"], p["style"]) for p in prompts}),
        "seed_audience_style_cells": len({(p["seed_id"], p["audience"], p["style"]) for p in prompts}),
        "kept_audience_style_cells": len(cells),
        "kept_by_style": _sum(cells, "style"),
        "kept_by_audience": _sum(cells, "audience"),
        "distinct_4gram_kept": distinct_ngram_ratio(_texts(kept, kept_docs)) if kept_docs else None,
        "distinct_4gram_generated": distinct_ngram_ratio(_texts(every, len(prompts))),
    }


def _sum(cells: list[dict], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in cells:
        out[c[key]] = out.get(c[key], 0) + c["count()"]
    return dict(sorted(out.items()))
