"""Stage `annotate`: signal columns (language, heuristic values, edu_score) on every document; drops nothing.

Values are threshold-free, so changing a threshold in `select` reruns `select` only, never this stage.
"""

from __future__ import annotations

import functools
import os

import pyarrow as pa
import ray

from pipeline.errors import UserError
from pipeline.parts import read_part
from pipeline.stage import Stage, StageContext, StageOutput
from pipeline.stages.annotate.config import AnnotateConfig
from pipeline.stages.annotate.signals import Annotator
from pipeline.stages.annotate.signals.langid import default_lid_model


def _with_drop_columns(table: pa.Table) -> pa.Table:
    n = len(table)
    return table.append_column("drop_reason", pa.nulls(n, pa.string())).append_column(
        "drop_detail", pa.nulls(n, pa.string())
    )


def _cpus_per_actor(workers: int) -> float:
    """One CPU each, but leave one CPU of the cluster free: actors hold their CPUs for the whole stage, and
    the
    tasks that read the input need one, or the pool waits on a read that never starts (seen on 2 CPUs)."""
    total = ray.cluster_resources().get("CPU", 1)
    return min(1.0, max(0.1, (total - 1) / workers))


def run(ctx: StageContext) -> StageOutput:
    cfg: AnnotateConfig = ctx.section
    # Checked here, not when the config is validated: the classifier is often trained by an earlier step
    # of the same job (`make demo` does), after `phicurate validate` ran.
    if cfg.edu_model and "://" not in cfg.edu_model and not os.path.isfile(cfg.edu_model):
        raise UserError(
            f"annotate.edu_model: model file '{cfg.edu_model}' not found (relative to {os.getcwd()}); "
            "train one with `phicurate classifier train --labels FILE --out DIR`"
        )
    # One part per actor call: each actor loads the models once and annotates whole parts of ingest's output.
    factory = functools.partial(_annotator, cfg.lid_model, cfg.edu_model, cfg.batch_size)
    todo = ctx.upstream_parts("ingest")
    return StageOutput(
        parts=ctx.run_parts(todo, factory, actors=cfg.workers, num_cpus=_cpus_per_actor(cfg.workers))
    )


def _annotator(lid_model: str | None, edu_model: str | None, batch_size: int):
    annotator = Annotator(lid_model=lid_model, edu_model=edu_model)

    def process(spec: dict, stats: dict):
        for table in read_part(spec, batch_rows=batch_size):
            yield _with_drop_columns(annotator(table))

    return process


def models(config) -> list[str | None]:
    """The models are outside inputs: a changed model file, local or on object storage, reruns annotate."""
    return [config.annotate.lid_model or default_lid_model(), config.annotate.edu_model]


STAGE = Stage("annotate", run, outside_files=models, resumes=True)
