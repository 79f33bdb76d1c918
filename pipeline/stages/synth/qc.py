"""Quality control of generated text, and how diverse it is.

The checks reuse the web path's pieces rather than copies of them: the signal columns of `annotate`
(pipeline.stages.annotate.signals: language ID, Gopher/C4/FineWeb values, edu_score) judged by select-style
rules
(pipeline.stages.select.rules), then decontamination (pipeline.stages.decontaminate) and dedup against the
generations
themselves and the web (pipeline.stages.dedup). A generation is dropped by the first check it fails.
"""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.compute as pc

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


def diversity(prompts: list[dict], docs: pa.Table) -> dict:
    """Cells covered by the prompts and by the kept documents, and distinct-4 of kept and of all
    generations."""
    meta = [json.loads(m) for m in docs["meta"].to_pylist()]
    kept = pc.is_null(docs["drop_reason"]).to_pylist()
    texts = docs["text"].to_pylist()
    rng = random.Random(0)
    sample = lambda xs: xs if len(xs) <= DIVERSITY_SAMPLE else rng.sample(xs, DIVERSITY_SAMPLE)  # noqa: E731
    kept_meta = [m for m, k in zip(meta, kept) if k]
    return {
        "prompts": len(prompts),
        "seeds": len({p["seed_id"] for p in prompts}),
        "audience_style_cells": len({(p["audience"], p["style"]) for p in prompts}),
        "seed_audience_style_cells": len({(p["seed_id"], p["audience"], p["style"]) for p in prompts}),
        "kept_audience_style_cells": len({(m["audience"], m["style"]) for m in kept_meta}),
        "kept_by_style": _count(m["style"] for m in kept_meta),
        "kept_by_audience": _count(m["audience"] for m in kept_meta),
        "distinct_4gram_kept": distinct_ngram_ratio(sample([t for t, k in zip(texts, kept) if k and t])),
        "distinct_4gram_generated": distinct_ngram_ratio(sample([t for t in texts if t])),
    }


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))
