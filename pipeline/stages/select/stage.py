"""Stage `select`: keep the documents that pass every configured rule over annotate's signal columns.

Dropped documents carry the first failing rule as `drop_reason` and the measured value against the
threshold as `drop_detail`; each active heuristic filter also gets a column with the rule it fails on.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import UserError
from pipeline.stage import Stage, StageContext, StageOutput
from pipeline.stages.select import rules
from pipeline.stages.select.config import SelectConfig


def _sampled(ids: pa.ChunkedArray, share: float) -> pa.Array:
    """Deterministic per-id sample: the same documents whatever the batching."""
    limit = int(share * 2**32)
    return pa.array(
        [int.from_bytes(hashlib.sha1(i.encode()).digest()[:4], "big") < limit for i in ids.to_pylist()]
    )


def select_batch(table: pa.Table, cfg: SelectConfig) -> pa.Table:
    """Add drop_reason, drop_detail and per-filter verdict columns; blank the text of unsampled dropped
    docs."""
    reason, detail = rules.first_failure(table, cfg)
    for name, verdict in rules.filter_verdicts(table, cfg).items():
        table = table.append_column(f"{name}_fail", verdict)
    if cfg.dropped_text_sample < 1:
        blank = pc.and_(pc.is_valid(reason), pc.invert(_sampled(table["id"], cfg.dropped_text_sample)))
        i = table.column_names.index("text")
        table = table.set_column(
            i, "text", pc.if_else(blank, pa.scalar(None, table["text"].type), table["text"])
        )
    return table.append_column("drop_reason", reason).append_column("drop_detail", detail)


def run(ctx: StageContext) -> StageOutput:
    cfg: SelectConfig = ctx.section
    docs = ctx.read("annotate")
    missing = [c for c in rules.columns(rules.rules(cfg)) if c not in docs.schema().names]
    if missing:
        hint = " (set annotate.edu_model)" if "edu_score" in missing else ""
        raise UserError(f"select: rules need signal columns {missing} that annotate's output lacks{hint}")
    out = docs.map_batches(select_batch, fn_kwargs=dict(cfg=cfg), batch_format="pyarrow")
    return StageOutput(
        docs=out,
        details={"rules": [r.reason for r in rules.rules(cfg)], "select": cfg.model_dump(mode="json")},
    )


STAGE = Stage("select", run)
