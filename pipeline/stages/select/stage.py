"""Stage `select`: keep the documents that pass every configured rule over annotate's signal columns.

Dropped documents carry the first failing rule as `drop_reason` and the measured value against the
threshold as `drop_detail`; each active heuristic filter also gets a column with the rule it fails on.
"""

from __future__ import annotations

import functools
import hashlib

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import UserError
from pipeline.parts import read_part, schema_of
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


def _selector(cfg: SelectConfig):
    def process(spec: dict, stats: dict):
        for table in read_part(spec):
            yield select_batch(table, cfg)

    return process


def run(ctx: StageContext) -> StageOutput:
    cfg: SelectConfig = ctx.section
    todo = ctx.upstream_parts("annotate")
    names = schema_of(todo).names
    missing = [c for c in rules.columns(rules.rules(cfg)) if c not in names]
    if missing:
        hint = " (set annotate.edu_model)" if "edu_score" in missing else ""
        raise UserError(f"select: rules need signal columns {missing} that annotate's output lacks{hint}")
    return StageOutput(
        parts=ctx.run_parts(todo, functools.partial(_selector, cfg)),
        details={"rules": [r.reason for r in rules.rules(cfg)], "select": cfg.model_dump(mode="json")},
    )


STAGE = Stage("select", run, resumes=True)
