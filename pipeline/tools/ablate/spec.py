"""The ablation's own YAML: which pipeline config it reads, the arms, seeds, token count and held-out sets.

A separate file rather than a section of the pipeline config: an ablation compares several variants of one
recipe, so it names the recipe (`base`) instead of being one. `phicurate ablate` also accepts a plain
pipeline config, with every ablation setting at its default.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, model_validator

from pipeline.config import Config, _explain, _key_path, load_config
from pipeline.errors import UserError
from pipeline.section import Section
from pipeline.stages.decontaminate.config import DATA_DIR
from pipeline.stages.mix.recipes import PhaseRecipe

BUILTIN_ARMS = ("raw", "filtered", "curated", "heldout-leak")
DEFAULT_ARMS = ("raw", "filtered", "curated")
# the benchmark test sets the decontaminate stage bundles: one copy in the repository
BENCH_DIR = DATA_DIR


class EduHeldout(Section):
    """Educational English documents held out by a hash of their id, from ingest's output."""

    sources: list[str] = Field(min_length=1)  # values of the `source` column that count as educational
    fraction: float = Field(0.05, gt=0, lt=1)  # share of those documents held out (by sha256 of the id)
    max_docs: int = Field(32, ge=1)  # at most this many of them (the smallest hashes) are evaluated
    max_tokens_per_doc: int = Field(512, ge=8)  # each is evaluated (and n-gram checked) on its first tokens


class BenchmarkHeldout(Section):
    """A benchmark test file evaluated as question + answer text (and, for MMLU, by answer choice)."""

    path: str  # JSONL(.gz): MMLU rows (question, A-D, answer letter) or GSM8K rows (question, answer)
    kind: str = Field(pattern=r"^(mmlu|gsm8k)$")  # how an item becomes text: mmlu or gsm8k
    max_items: int = Field(200, ge=1)  # the first items of the file (MMLU: spread over its subjects)


def _default_benchmarks() -> dict[str, BenchmarkHeldout]:
    root = os.path.normpath(BENCH_DIR)
    return {
        "mmlu": BenchmarkHeldout(path=os.path.join(root, "mmlu-test.jsonl.gz"), kind="mmlu"),
        "gsm8k": BenchmarkHeldout(path=os.path.join(root, "gsm8k-test.jsonl.gz"), kind="gsm8k"),
    }


class HeldoutSpec(Section):
    """The sets no arm trains on: removed from every arm's documents by id and by word n-gram overlap."""

    edu: EduHeldout | None = None  # null: no educational held-out set
    benchmarks: dict[str, BenchmarkHeldout] = Field(default_factory=_default_benchmarks)  # name -> file
    ngram: int = Field(13, ge=3)  # an arm document sharing a word n-gram with a held-out text is removed


class ArmRecipe(Section):
    """A user arm: the two phase recipes of `mix`, read from the same (held-out-free) stage outputs."""

    phase1: PhaseRecipe
    phase2: PhaseRecipe


class AblateSpec(Section):
    """An ablation: the same model, steps, tokens and seeds on every arm, evaluated on the same held-out
    sets."""

    base: str  # the pipeline config whose stage outputs the arms read (relative to this file, else the cwd)
    output: str | None = None  # local directory of the ablation; null: BASE_OUTPUT/ablate
    arms: list[str] = Field(list(DEFAULT_ARMS), min_length=1)  # built-in (raw, filtered, curated) or recipes
    seeds: int = Field(3, ge=1)  # training seeds per arm (model init and sequence order): 0..seeds-1
    tokens: int | None = Field(None, ge=1)  # training tokens per arm, split evenly over the phases
    recipes: dict[str, ArmRecipe] = {}  # user arms by name, e.g. a stricter edu_score threshold
    heldout: HeldoutSpec = HeldoutSpec()
    workers: str = Field("ray", pattern=r"^(ray|process)$")  # ray: one Ray task per arm and seed
    num_cpus: float = Field(1, gt=0)  # Ray resources of one training task
    num_gpus: float = Field(0, ge=0)  # idem; on a GPU cluster e.g. 1 (the trainer then uses CUDA)

    @model_validator(mode="after")
    def _arms_known(self) -> "AblateSpec":
        clash = sorted(set(self.recipes) & set(BUILTIN_ARMS))
        if clash:
            raise ValueError(f"recipes {clash} reuse built-in arm names {', '.join(BUILTIN_ARMS)}")
        unknown = [a for a in self.arms if a not in BUILTIN_ARMS and a not in self.recipes]
        if unknown:
            raise ValueError(
                f"arms {unknown} are neither built-in ({', '.join(BUILTIN_ARMS)}) nor under 'recipes'"
            )
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms lists an arm twice: {self.arms}")
        if "heldout-leak" in self.arms and self.heldout.edu is None:
            raise ValueError("arm 'heldout-leak' trains on the edu held-out set: give heldout.edu")
        return self


def load_spec(path: str, arms: list[str] | None = None, seeds: int | None = None, tokens: int | None = None):
    """(spec, base config): an ablation YAML (it has `base`) or a pipeline config; CLI flags override."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a mapping, got {type(data).__name__}")
    if "base" not in data:  # a pipeline config: ablate it with the default settings
        data = {"base": str(p)}
    else:
        if isinstance(data["base"], str) and (p.parent / data["base"]).is_file():  # beside this file first
            data["base"] = str(p.parent / data["base"])
    data.update({k: v for k, v in (("arms", arms), ("seeds", seeds), ("tokens", tokens)) if v is not None})
    try:
        spec = AblateSpec.model_validate(data)
    except ValidationError as e:
        lines = [f"{p}: invalid ablation config:"]
        lines += [f"  {_key_path(err['loc'])}: {_explain(err)}" for err in e.errors()]
        raise UserError("\n".join(lines)) from None
    config: Config = load_config(spec.base)
    if config.train is None or config.mix is None:
        raise UserError(f"{spec.base}: an ablation needs the config's 'mix' and 'train' sections")
    if "://" in (spec.output or config.run.output):
        raise UserError(
            f"{p}: the ablation links stage outputs and memory-maps shards on a local or shared filesystem; "
            f"set 'output' to such a directory (the base output is '{config.run.output}')"
        )
    return spec, config
