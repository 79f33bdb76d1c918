"""Config of stage `synth`: the teacher, the seeds and prompts, and the checks a generation must pass."""

from __future__ import annotations

from pydantic import Field, field_validator

from pipeline.section import Section
from pipeline.stages.decontaminate.config import DecontaminateConfig
from pipeline.stages.dedup.config import DedupConfig
from pipeline.stages.select.config import SelectConfig
from synth.backends import BackendConfig
from synth.prompts import PromptsConfig
from synth.seeds import WebSeedsConfig


class QCConfig(Section):
    min_words: int = Field(50, ge=0)  # fewer whitespace-separated words: too_short
    # drop generations cut off by max_tokens (finish_reason "length") as truncated
    drop_truncated: bool = False
    filters: SelectConfig | None = SelectConfig()  # select-style rules over the annotate signals; null: off


class SynthConfig(Section):
    backend: BackendConfig  # the teacher LLM and how it runs
    topics: dict[str, list[str]] = {}  # subject -> subtopics; each subtopic is a seed
    web_seeds: WebSeedsConfig = WebSeedsConfig()  # passages of kept web documents as seeds
    prompts: PromptsConfig = PromptsConfig()  # audiences, styles (templates), cells and samples per seed
    qc: QCConfig = QCConfig()  # length and select-style rules over the annotate signals
    decontamination: DecontaminateConfig | None = (
        None  # benchmark items, found as decontaminate does; null: off
    )
    dedup: DedupConfig | None = (
        DedupConfig()
    )  # against the generations themselves and the kept web documents; null: off
    cache_dir: str | None = None  # generations kept across runs; default OUTPUT/synth_cache
    # prompts one task generates, checks and commits together: the most a killed run regenerates per engine
    prompts_per_part: int = Field(256, ge=1)

    @field_validator("topics")
    @classmethod
    def _topics_named(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for subject, ts in v.items():
            if not ts or any(not t.strip() for t in ts):
                raise ValueError(f"subject '{subject}': give a non-empty list of non-empty subtopics")
        return v
