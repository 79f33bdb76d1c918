"""Stage `decontaminate`: drop web documents that hold a benchmark test item (MMLU, GSM8K, HumanEval, ...).

Reads dedup's kept documents part by part (pipeline/parts.py): each part is marked, written and committed
by the worker that holds one copy of the index, so a killed run redoes only the uncommitted parts. A
dropped document has drop_reason `contaminated:<benchmark>` and names the item and the matched words in
drop_detail; contamination.json in the stage directory lists, per benchmark, the items found, the
documents by source and examples (`phicurate report` shows it as a table), merged from each part's small
summary: the driver never holds documents.
"""

from __future__ import annotations

import functools

from pipeline import storage
from pipeline.stage import Stage, StageContext, StageOutput
from pipeline.stages.decontaminate.config import DecontaminateConfig

REPORT = "contamination.json"


def run(ctx: StageContext) -> StageOutput:
    # Ray and the index: not needed to load a config
    import ray

    from pipeline.stages.decontaminate.core import cpus_per_actor, marker, merge
    from pipeline.stages.decontaminate.index import load_index

    cfg: DecontaminateConfig = ctx.section
    index = load_index(cfg)  # on the driver once: its figures go into the report
    workers = cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    factory = functools.partial(marker, [ray.put(index)], cfg.examples)
    res = ctx.run_parts(
        ctx.upstream_parts("dedup"), factory, actors=workers, num_cpus=cpus_per_actor(workers)
    )
    benchmarks = merge([s["contamination"] for s in res.stats], index.counts, cfg.examples)
    storage.write_json(storage.join(ctx.work_dir, REPORT), {"index": index.stats(), "benchmarks": benchmarks})
    counts = {
        name: {k: b[k] for k in ("items", "items_found", "docs_dropped", "by_source")}
        for name, b in benchmarks.items()
    }
    return StageOutput(parts=res, details={"index": index.stats(), "benchmarks": counts})


def benchmark_files(config) -> list[str]:
    """Benchmark files are read from outside the pipeline: a changed file reruns the stage."""
    return [b.resolved_path() for b in config.decontaminate.benchmarks]


STAGE = Stage("decontaminate", run, outside_files=benchmark_files, resumes=True)
