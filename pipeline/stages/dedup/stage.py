"""Stage `dedup`: exact duplicates, then MinHash-LSH near duplicates; one document kept per cluster."""

from __future__ import annotations

from pipeline import parts
from pipeline.stage import Stage, StageContext, StageOutput


def _copier():
    """The parts are the files of dedup's last step (one per shuffle partition), written as they are."""
    return lambda spec, stats: parts.read_part(spec)


def run(ctx: StageContext) -> StageOutput:
    from pipeline.runner import read_record
    from pipeline.stages.dedup.core import dedup_files, remove_steps  # Ray and scipy: not for a config

    upstream = read_record(ctx.output, "select")  # its count spares a pass over the input to count it
    out_dir, details = dedup_files(
        ctx.read("select"), ctx.section, ctx.work_dir, num_docs=upstream["docs_out"] if upstream else None
    )
    written = ctx.run_parts(parts.upstream_parts(out_dir), _copier)
    # a kill after this recomputes the steps (the parts are reused): a rare window, for half the disk
    remove_steps(ctx.work_dir, details["steps"])
    return StageOutput(parts=written, details=details)


# resumes: a rerun after a kill keeps the work directory: the steps committed there (steps.py), then the
# output's parts committed (parts.py)
STAGE = Stage("dedup", run, resumes=True)
