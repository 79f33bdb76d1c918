"""Stage `decontaminate`: drop web documents that hold a benchmark test item (MMLU, GSM8K, HumanEval, ...).

Reads dedup's kept documents. A dropped document has drop_reason `contaminated:<benchmark>` and names the
item and the matched words in drop_detail; contamination.json in the stage directory lists, per benchmark,
the items found, the documents by source and examples (`phicurate report` shows it as a table).
"""

from __future__ import annotations

from pipeline import storage
from pipeline.stage import Stage, StageContext, StageOutput
from pipeline.stages.decontaminate.config import DecontaminateConfig

REPORT = "contamination.json"


def run(ctx: StageContext) -> StageOutput:
    # Ray and the index: not needed to load a config
    from pipeline.stages.decontaminate.core import REASON, decontaminate, summarize
    from pipeline.stages.decontaminate.index import load_index

    cfg: DecontaminateConfig = ctx.section
    index = load_index(cfg)
    docs = decontaminate(ctx.read("dedup"), cfg, index).materialize()  # marked once, read twice
    cols = [c for c in ("id", "source", "drop_reason", "drop_detail") if c in docs.schema().names]
    hits = docs.select_columns(cols).filter(
        lambda r: r["drop_reason"] is not None and r["drop_reason"].startswith(REASON + ":")
    )
    benchmarks = summarize(hits.take_all(), index, cfg.examples)
    storage.make_dir(ctx.work_dir)
    storage.write_json(storage.join(ctx.work_dir, REPORT), {"index": index.stats(), "benchmarks": benchmarks})
    counts = {
        name: {k: b[k] for k in ("items", "items_found", "docs_dropped", "by_source")}
        for name, b in benchmarks.items()
    }
    return StageOutput(docs=docs, details={"index": index.stats(), "benchmarks": counts})


def benchmark_files(config) -> list[str]:
    """Benchmark files are read from outside the pipeline: a changed file reruns the stage."""
    return [b.resolved_path() for b in config.decontaminate.benchmarks]


STAGE = Stage("decontaminate", run, outside_files=benchmark_files)
