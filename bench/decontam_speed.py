"""Decontamination speed: documents per second per core, our stage's matching against datatrove's filter.

    .venv/bin/python bench/decontam_speed.py [--output out/demo] [--repeats 3] [--docs 2000]

Same documents (the demo corpus's ingested web pages and OneStopEnglish articles, from the same Parquet),
same items (the bundled MMLU, GSM8K and HumanEval test sets), same n (13), one process each, both warm:
the index is built or loaded before the clock starts (build times printed apart).
- ours: the stage's real per-batch function `mark` (pipeline/stages/decontaminate/core.py) on Arrow batches
  of 256 documents, as each Ray actor runs it; this includes the exact matching of short items, which
  datatrove does not do.
- datatrove: NGramsDecontFilter.filter on each Document (its per-document path; what its run() calls).
  Its indexer loads benchmarks only through lighteval, a download and not installed here, so its index
  files are built from the same item texts with NGramsDecontIndexer's own hashing (compute_hashes) and
  written as its run() writes them (bench/_decontam_common.py).
Median of the repeats. ratio: ours / datatrove documents per second per core (higher is better).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa  # noqa: E402

from bench._decontam_common import corpus, datatrove_filter, datatrove_index  # noqa: E402
from pipeline.stages.decontaminate.config import DecontaminateConfig  # noqa: E402
from pipeline.stages.decontaminate.core import mark  # noqa: E402
from pipeline.stages.decontaminate.index import load_index  # noqa: E402

BATCH = 256


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--output", default="out/demo", help="a run output with the demo's ingest (run if missing)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--docs", type=int, default=2000, help="documents timed (the first N of the corpus)")
    args = ap.parse_args()

    docs = corpus(args.output).slice(0, args.docs)
    texts = docs["text"].to_pylist()
    words = sum(len((t or "").split()) for t in texts)
    print(f"documents: {len(texts)} ({words} words); repeats: {args.repeats}; one process each, warm")

    t0 = time.perf_counter()
    index = load_index(DecontaminateConfig())
    print(f"ours: index built in {time.perf_counter() - t0:.1f}s ({index.stats()['memory_mb']} MB)")
    batches = [docs.slice(i, BATCH) for i in range(0, docs.num_rows, BATCH)]

    def ours() -> int:
        return sum(
            pa.compute.sum(pa.compute.is_valid(mark(b, index)["drop_reason"])).as_py() for b in batches
        )

    from datatrove.data import Document

    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        datatrove_index(folder)
        dt = datatrove_filter(folder)
        dt.load_index_hashes()
        print(f"datatrove: index files built and loaded in {time.perf_counter() - t0:.1f}s")
        documents = [Document(text=t or "", id=str(i)) for i, t in enumerate(texts)]

        def theirs() -> int:
            return sum(dt.filter(d) is not True for d in documents)

        timings = {"ours": [], "datatrove": []}
        hits = {}
        for _ in range(args.repeats):
            for name, fn in (("ours", ours), ("datatrove", theirs)):
                t0 = time.perf_counter()
                hits[name] = fn()
                timings[name].append(time.perf_counter() - t0)
    rate = {k: len(texts) / statistics.median(v) for k, v in timings.items()}
    for k in ("ours", "datatrove"):
        runs = ", ".join(f"{t:.2f}s" for t in timings[k])
        print(f"{k:9s}: {rate[k]:8.1f} docs/s/core (median of {runs}); documents flagged: {hits[k]}")
    print(f"ratio: {rate['ours'] / rate['datatrove']:.3f}")


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    main()
