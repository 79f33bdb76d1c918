"""Typed schema for YAML recipes, and loading with errors that name the file, key path and expectation.

Each stage's section is defined next to the stage's code; this module assembles them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from pipeline.errors import UserError
from pipeline.section import Section
from pipeline.stages.annotate import AnnotateConfig
from pipeline.stages.dedup import DedupConfig
from pipeline.stages.ingest import IngestConfig
from pipeline.stages.mix import MixConfig
from pipeline.stages.select import SelectConfig
from pipeline.stages.synth import SynthConfig
from train_handoff.config import TrainConfig

STAGE_ORDER = ["ingest", "annotate", "select", "dedup", "synth", "mix", "train"]
StageName = Literal["ingest", "annotate", "select", "dedup", "synth", "mix", "train"]


class RunConfig(Section):
    """Where the run writes and which stages it runs by default."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    output: str = "out/run"
    stages: list[StageName] | None = None  # default: every stage that has a section


class RayConfig(Section):
    """How to reach Ray: a cluster address, or an in-process local Ray (the default)."""

    address: str | None = None  # also RAY_ADDRESS; "auto" joins a running local cluster
    num_cpus: int | None = Field(None, ge=1)  # in-process Ray only; default: all cores
    object_store_memory_mb: int | None = Field(None, ge=64)  # in-process Ray only
    progress_bars: bool = True


class Config(Section):
    run: RunConfig = RunConfig()
    ray: RayConfig = RayConfig()
    ingest: IngestConfig
    annotate: AnnotateConfig | None = None
    select: SelectConfig | None = None
    dedup: DedupConfig | None = None
    synth: SynthConfig | None = None
    mix: MixConfig | None = None
    train: TrainConfig | None = None

    @model_validator(mode="after")
    def _stages_have_sections(self) -> "Config":
        for name in self.run.stages or []:
            if name != "ingest" and getattr(self, name, None) is None:
                raise ValueError(f"run.stages names '{name}' but the config has no '{name}' section")
        return self

    def stages(self) -> list[str]:
        """Stages this config runs, in pipeline order."""
        wanted = self.run.stages or [s for s in STAGE_ORDER if getattr(self, s, None) is not None]
        return [s for s in STAGE_ORDER if s in wanted]

    def section_hash(self, stage: str) -> str:
        """Hash of one stage's section: a stage reruns when this changes."""
        section = getattr(self, stage)
        blob = json.dumps(section.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or "[" in str(part):
            continue  # pydantic's internal validator names, not config keys
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _explain(err: dict) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see the config reference in README.md)"
    if kind == "missing":
        return "required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if "input" in err and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return msg


def parse_config(data: object, source: str = "<config>") -> Config:
    """Validate a parsed YAML document; raise UserError naming `source`, each key path and what was expected."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of sections (run, ray, ingest, ...), got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        lines = [f"{source}: invalid config:"]
        for err in e.errors():
            lines.append(f"  {_key_path(err['loc'])}: {_explain(err)}")
        raise UserError("\n".join(lines)) from None


def load_config(path: str | os.PathLike, output: str | None = None) -> Config:
    """Read and validate a YAML recipe; `output` overrides run.output (the CLI's --output)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML: {e}") from None
    if output is not None and isinstance(data, dict):
        data.setdefault("run", {})
        if isinstance(data["run"], dict):
            data["run"]["output"] = output
    return parse_config(data, str(p))
