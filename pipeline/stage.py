"""What a stage is: a function from upstream Ray Datasets to one Ray Dataset, plus a record.

A stage returns every document it saw, kept or not: `drop_reason` is null for kept documents.
The runner writes kept documents as Parquet parts in the stage directory and dropped ones under
`dropped/`, counts both, and writes `_stage.json`. Stages never call each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import ray.data

    from pipeline.config import Config


@dataclass
class StageContext:
    stage: str
    config: "Config"
    output: str  # the run's output directory
    work_dir: str  # where this stage may write extra files; it becomes OUTPUT/<stage>/ on success
    read: Callable[
        [str], "ray.data.Dataset"
    ]  # kept documents of an upstream stage (one of the registry's inputs)

    @property
    def section(self) -> Any:
        """This stage's config section."""
        return getattr(self.config, self.stage)


@dataclass
class StageOutput:
    # every document with `drop_reason` (null = kept); None if the stage wrote its own files
    docs: "ray.data.Dataset | None"
    docs_in: int | None = None  # default: the number of documents in `docs`
    docs_out: int | None = None  # only for stages that write their own files (docs is None)
    dropped: dict[str, int] | None = None  # idem
    tokens_out: int | None = None  # default: whitespace-separated words of the kept texts
    # stage-specific figures, stored under "details" in _stage.json
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """A stage's implementation; its name, config class and upstream stages are in pipeline/registry.py."""

    name: str
    run: Callable[[StageContext], StageOutput]
    # Files read from outside the pipeline (inputs, models, benchmarks): a change to one reruns the stage.
    outside_files: Callable[["Config"], list[str | None]] | None = None
