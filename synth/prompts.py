"""Prompts = seed x audience x style, from templates in the config, each with a deterministic id.

Diversity comes from crossing what to write about (a topic or a web passage) with who it is for and
in which form, as phi-1 and Cosmopedia did; the id hashes the prompt text and sample number, so the
same config always gives the same prompts and the resume cache recognises them.
"""

from __future__ import annotations

import hashlib
import string

from pydantic import Field, field_validator, model_validator

from pipeline.schema import stable_id
from pipeline.section import Section
from synth.seeds import Seed

DEFAULT_AUDIENCES = {
    "young_children": "young children",
    "high_school": "high school students",
    "college": "college students",
    "professionals": "professionals and researchers",
}
DEFAULT_STYLES = {
    "textbook": (
        "Write an extensive, detailed section of a textbook for {audience} about {seed}. "
        "Develop each concept in depth, step by step, with concrete examples. Do not add a title or an "
        "introduction."
    ),
    "exercises": (
        "Write a set of exercises for {audience} about {seed}, each followed by a fully worked solution "
        "that explains every step."
    ),
    "dialogue": (
        "Write a question-and-answer dialogue between a curious learner and a patient teacher, "
        "pitched at {audience}, that explains {seed}."
    ),
    "story": (
        "Write a story for {audience} in which the characters discover and explain {seed}. "
        "The concepts must be correct and clearly explained inside the story."
    ),
}
TOPIC_SEED = '"{topic}" (a topic in {subject})'
WEB_SEED = (
    "the main ideas of the following extract from a web page, without mentioning the extract itself:"
    '\n\n"""\n{passage}\n"""\n'
)


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


class PromptsConfig(Section):
    audiences: dict[str, str] = Field(default=DEFAULT_AUDIENCES, min_length=1)  # name -> how templates say it
    # name -> template with {seed} and {audience}
    styles: dict[str, str] = Field(default=DEFAULT_STYLES, min_length=1)
    topic_seed: str = TOPIC_SEED  # how a topic reads in {seed}; uses {topic} and {subject}
    web_seed: str = WEB_SEED  # how a web passage reads in {seed}; uses {passage}
    # audience x style cells per seed, picked by hash; null: all
    cells_per_seed: int | None = Field(None, ge=1)
    samples_per_cell: int = Field(1, ge=1)  # prompts per seed and cell (each sampled with its own seed)

    @field_validator("styles")
    @classmethod
    def _style_placeholders(cls, v: dict[str, str]) -> dict[str, str]:
        for name, t in v.items():
            if _placeholders(t) != {"seed", "audience"}:
                raise ValueError(
                    f"style '{name}': the template must use exactly {{seed}} and {{audience}}, got "
                    f"{sorted(_placeholders(t))}"
                )
        return v

    @model_validator(mode="after")
    def _seed_placeholders(self) -> "PromptsConfig":
        if not _placeholders(self.topic_seed) <= {"topic", "subject"}:
            raise ValueError(
                f"topic_seed may use only {{topic}} and {{subject}}, got "
                f"{sorted(_placeholders(self.topic_seed))}"
            )
        if _placeholders(self.web_seed) != {"passage"}:
            raise ValueError(
                f"web_seed must use {{passage}} and nothing else, got {sorted(_placeholders(self.web_seed))}"
            )
        return self


def _cells(seed: Seed, cfg: PromptsConfig) -> list[tuple[str, str]]:
    cells = [(a, s) for a in cfg.audiences for s in cfg.styles]
    if cfg.cells_per_seed is None or cfg.cells_per_seed >= len(cells):
        return cells
    rank = lambda c: hashlib.sha1(f"{seed.seed_id}\x1f{c[0]}\x1f{c[1]}".encode()).hexdigest()  # noqa: E731
    return sorted(cells, key=rank)[: cfg.cells_per_seed]


def build_prompts(seeds: list[Seed], cfg: PromptsConfig) -> list[dict]:
    """One row per prompt: id, prompt, and what it was made of (seed, audience, style, sample)."""
    rows = []
    for seed in seeds:
        what = (
            cfg.topic_seed.format(topic=seed.topic, subject=seed.subject)
            if seed.kind == "topic"
            else cfg.web_seed.format(passage=seed.passage)
        )
        for audience, style in _cells(seed, cfg):
            prompt = cfg.styles[style].format(seed=what, audience=cfg.audiences[audience])
            for k in range(cfg.samples_per_cell):
                rows.append(
                    {
                        "id": stable_id("synth", prompt, k),
                        "prompt": prompt,
                        "seed_kind": seed.kind,
                        "seed_id": seed.seed_id,
                        "subject": seed.subject,
                        "topic": seed.topic,
                        "audience": audience,
                        "style": style,
                        "sample": k,
                    }
                )
    return rows
