"""Stage `dedup`: exact duplicates, then MinHash-LSH near duplicates; one document kept per cluster."""

from __future__ import annotations

from pipeline.stage import Stage, StageContext, StageOutput


def run(ctx: StageContext) -> StageOutput:
    from pipeline.runner import read_record
    from pipeline.stages.dedup.core import dedup_dataset  # Ray and scipy: not needed to load a config

    upstream = read_record(ctx.output, "select")  # its count spares a pass over the input to count it
    docs, details = dedup_dataset(
        ctx.read("select"), ctx.section, ctx.work_dir, num_docs=upstream["docs_out"] if upstream else None
    )
    return StageOutput(docs=docs, details=details)


# resumes: a rerun after a kill keeps the work directory and reuses the steps committed there (steps.py)
STAGE = Stage("dedup", run, resumes=True)
