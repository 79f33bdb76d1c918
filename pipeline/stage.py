"""What a stage is: a function of its upstream stages' outputs that writes its own, plus a record.

A stage sees every document, kept or not: `drop_reason` is null for kept documents. Kept documents are
Parquet parts in the stage directory, dropped ones are under `dropped/`; both are counted where they are
written and the runner writes `_stage.json`. Stages never call each other. A stage either runs part by
part (`ctx.run_parts`, pipeline/parts.py: written and committed by the tasks, resumable) or returns a Ray
Dataset that the runner writes in one pass (a stage of your own), or writes its own files (train).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import ray.data

    from pipeline.config import Config
    from pipeline.parts import Part, PartsResult


@dataclass
class StageContext:
    stage: str
    config: "Config"
    output: str  # the run's output directory
    work_dir: str  # where this stage may write extra files; it becomes OUTPUT/<stage>/ on success
    read: Callable[
        [str], "ray.data.Dataset"
    ]  # kept documents of an upstream stage (one of the registry's inputs)
    secrets: dict[str, str] = field(default_factory=dict)  # values scrubbed from everything written

    def upstream_parts(self, stage: str, max_rows: int | None = None) -> "list[Part]":
        """Deterministic parts over an upstream stage's kept documents (whole row groups of its files)."""
        from pipeline import parts, storage

        return parts.upstream_parts(storage.join(self.output, stage), max_rows or parts.PART_ROWS)

    def run_parts(
        self,
        todo: "list[Part]",
        factory,
        actors: int | None = None,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        work_dir: str | None = None,
    ):
        """Run and commit the parts not committed by an earlier attempt; see pipeline/parts.py. `work_dir`
        (default: the stage's) for parts that are a step before the stage's output (synth's generations)."""
        from pipeline import parts

        return parts.run_parts(
            todo,
            factory,
            work_dir or self.work_dir,
            self.secrets,
            actors=actors,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
        )

    @property
    def section(self) -> Any:
        """This stage's config section."""
        return getattr(self.config, self.stage)


@dataclass
class StageOutput:
    # every document with `drop_reason` (null = kept); None if the stage wrote its own files or parts
    docs: "ray.data.Dataset | None" = None
    parts: "PartsResult | None" = None  # what ctx.run_parts returned, for a stage that runs by part
    docs_in: int | None = None  # default: what the upstream stage kept, from its record
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
    # The stage keeps what an earlier, killed attempt committed in its work directory (parts, steps); any
    # other stage starts from an empty work directory.
    resumes: bool = False
