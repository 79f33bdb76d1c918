"""The stages in pipeline order: name, config class, the stages each reads, where its code lives.

Every stage list in phicurate (the config's sections, `run.stages`, the runner's order, `status`) is
derived from `STAGES`. Importing this module loads each stage's `config.py` (pydantic only); a stage's
implementation, with its engines (Ray, spaCy, torch, vLLM), is imported on first `implementation()`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from pipeline.section import Section
from pipeline.stages.annotate.config import AnnotateConfig
from pipeline.stages.decontaminate.config import DecontaminateConfig
from pipeline.stages.dedup.config import DedupConfig
from pipeline.stages.ingest.config import IngestConfig
from pipeline.stages.mix.config import MixConfig
from pipeline.stages.select.config import SelectConfig
from pipeline.stages.synth.config import SynthConfig
from pipeline.stages.train.config import TrainConfig

if TYPE_CHECKING:
    from pipeline.stage import Stage


@dataclass(frozen=True)
class StageSpec:
    name: str
    config: type[Section]
    # The stages whose complete output this stage reads, given the whole config: a change upstream reruns it.
    inputs: Callable[[Any], tuple[str, ...]]
    required: bool = False  # the config must have this section

    @property
    def module(self) -> str:
        return f"pipeline.stages.{self.name}.stage"

    def implementation(self) -> "Stage":
        return importlib.import_module(self.module).STAGE


STAGES: tuple[StageSpec, ...] = (
    StageSpec("ingest", IngestConfig, lambda c: (), required=True),
    StageSpec("annotate", AnnotateConfig, lambda c: ("ingest",)),
    StageSpec("select", SelectConfig, lambda c: ("annotate",)),
    StageSpec("dedup", DedupConfig, lambda c: ("select",)),
    StageSpec("decontaminate", DecontaminateConfig, lambda c: ("dedup",)),
    # web seeds (and synth's dedup reference): the decontaminated web documents when that stage is configured
    StageSpec("synth", SynthConfig, lambda c: ("dedup",) if c.decontaminate is None else ("decontaminate",)),
    StageSpec("mix", MixConfig, lambda c: c.mix.stages_read()),
    # train reads the manifests of a mix (its own run's or train.mix_dir), fingerprinted as outside files
    StageSpec("train", TrainConfig, lambda c: ()),
)
ORDER: tuple[str, ...] = tuple(s.name for s in STAGES)
BY_NAME: dict[str, StageSpec] = {s.name: s for s in STAGES}
