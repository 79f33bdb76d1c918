"""Typed schema for YAML recipes, and loading with errors that name the file, key path and expectation.

Each stage's section is defined in `pipeline/stages/<name>/config.py`; this module assembles them in the
registry's order. It imports no engine: `status`, `validate`, `tune` and `report` load configs cheaply.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, create_model, model_validator

from pipeline.errors import UserError
from pipeline.registry import ORDER, STAGES
from pipeline.section import Section

StageName = Literal[ORDER]  # type: ignore[valid-type]


class RunConfig(Section):
    """Where the run writes and which stages it runs by default."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")  # names the run in reports and the loss curve
    output: str = "out/run"  # a directory or an object-store URI (s3://bucket/run); one per run
    stages: list[StageName] | None = None  # default: every stage that has a section


class RayConfig(Section):
    """How to reach Ray: a cluster address, or an in-process local Ray (the default)."""

    address: str | None = None  # also RAY_ADDRESS; "auto" joins a running local cluster
    num_cpus: int | None = Field(None, ge=1)  # in-process Ray only; default: all cores
    object_store_memory_mb: int | None = Field(None, ge=64)  # in-process Ray only
    progress_bars: bool = True  # Ray Data progress bars on the console
    # in-process Ray only: each worker's memory cap (RLIMIT_DATA); a task past it fails the stage with
    # "ran out of memory" instead of the kernel's OOM killer stopping some process; null: no cap
    worker_memory_mb: int | None = Field(None, ge=256)


class _Recipe(Section):
    """A whole recipe: `run`, `ray` and one section per stage (the registry's order and config classes)."""

    run: RunConfig = RunConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _stages_have_sections(self) -> "_Recipe":
        for name in self.run.stages or []:
            if getattr(self, name, None) is None:
                raise ValueError(f"run.stages names '{name}' but the config has no '{name}' section")
        return self

    def stages(self) -> list[str]:
        """Stages this config runs, in pipeline order."""
        wanted = self.run.stages or [s for s in ORDER if getattr(self, s, None) is not None]
        return [s for s in ORDER if s in wanted]

    def section_hash(self, stage: str) -> str:
        """Hash of one stage's section: a stage reruns when this changes."""
        section = getattr(self, stage)
        blob = json.dumps(section.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


Config = create_model(
    "Config",
    __base__=_Recipe,
    __doc__="A phicurate recipe (YAML): where to write, how to reach Ray, and a section per stage.",
    **{s.name: (s.config, ...) if s.required else (s.config | None, None) for s in STAGES},
)


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
        return "unknown key (check the spelling; see docs/config.md)"
    if kind == "missing":
        return "required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if "input" in err and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return msg


def parse_config(data: object, source: str = "<config>") -> Config:
    """Validate a parsed YAML document; raise UserError naming `source`, each key path and what was
    expected."""
    if not isinstance(data, dict):
        raise UserError(
            f"{source}: expected a mapping of sections (run, ray, ingest, ...), got {type(data).__name__}"
        )
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        lines = [f"{source}: invalid config:"]
        for err in e.errors():
            lines.append(f"  {_key_path(err['loc'])}: {_explain(err)}")
        raise UserError("\n".join(lines)) from None


# Bounds on a config before it is parsed into Python objects: YAML aliases can make a small file expand
# exponentially (an "alias bomb"), which then exhausts memory in validation and hashing.
MAX_CONFIG_BYTES = 1 << 20  # a recipe is a few KiB
MAX_CONFIG_ALIASES = 1000  # each `*name` counts
MAX_CONFIG_NODES = 100_000  # scalars, lists and mappings after every alias is expanded


def _expanded_nodes(root: yaml.Node, source: Path) -> int:
    """Nodes of the document with every alias expanded, counted without expanding (aliases share nodes)."""
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in in_progress:
            raise UserError(f"{source}: an alias refers to a node that contains it (a recursive config)")
        in_progress.add(key)
        if isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(c) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            n = 1
        in_progress.discard(key)
        sizes[key] = min(n, MAX_CONFIG_NODES + 1)  # capped: the sum stays a small integer
        return sizes[key]

    return size(root)


def _bounded_yaml(p: Path) -> object:
    """Parse a config within MAX_CONFIG_BYTES, MAX_CONFIG_ALIASES and MAX_CONFIG_NODES, or refuse it."""
    nbytes = p.stat().st_size
    if nbytes > MAX_CONFIG_BYTES:
        raise UserError(f"{p}: {nbytes} bytes; a config may have at most {MAX_CONFIG_BYTES} bytes")
    text = p.read_text(encoding="utf-8")
    try:
        aliases = sum(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text, Loader=yaml.SafeLoader))
        if aliases > MAX_CONFIG_ALIASES:
            raise UserError(f"{p}: {aliases} YAML aliases; a config may have at most {MAX_CONFIG_ALIASES}")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None:
            nodes = _expanded_nodes(root, p)
            if nodes > MAX_CONFIG_NODES:
                raise UserError(
                    f"{p}: its YAML aliases expand to more than {MAX_CONFIG_NODES} values; a config may "
                    "expand to at most that many (an alias bomb?)"
                )
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML: {e}") from None


def load_config(path: str | os.PathLike, output: str | None = None) -> Config:
    """Read and validate a YAML recipe within the size bounds above; `output` overrides run.output (the
    CLI's --output)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: config file not found")
    data = _bounded_yaml(p)
    if output is not None and isinstance(data, dict):
        data.setdefault("run", {})
        if isinstance(data["run"], dict):
            data["run"]["output"] = output
    return parse_config(data, str(p))
