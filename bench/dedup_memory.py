"""Dedup's driver memory against the corpus size: the stage on N and 4N short documents, each size in a fresh
process, and the driver's peak RSS (sampled every 20 ms, the driver process only: Ray's workers and
daemons are not counted, the object store spills to disk).

Input: short documents (3 to 6 sentences of OneStopEnglish, drawn at random), 8% near copies (one word
replaced) and 2% exact copies of earlier ones, written as Parquet parts outside the measurement and read
the way the runner reads a stage's input (`pipeline.runner.read_docs`: blocks of 512 rows). The stage's
output is consumed the way a streaming write does: every block tallied by drop reason on the workers, one
small row per block back. Goal: peak RSS at 4N at most 1.25x that at N.

    .venv/bin/python bench/dedup_memory.py [--sizes 50000,200000]
Ends with `ratio: <peak RSS at the largest size / at the smallest>`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _dedup_common as common  # noqa: E402

PART_ROWS = 50_000  # rows per input Parquet part (an upstream stage writes parts of about 128 MB)


def corpus(n: int, out: str, seed: int = 0) -> dict[str, int]:
    """`n` short documents as Parquet parts in `out`; returns how many copies were planted."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sentences = sorted(
        {
            s.strip()
            for t in common.onestopenglish()["text"].to_pylist()
            for s in re.split(r"(?<=[.!?])\s+", t)
        }
        - {""}
    )
    rng = random.Random(seed)
    ids, texts, planted = [], [], {"near": 0, "exact": 0}
    for i in range(n):
        u = rng.random()
        if i > 100 and u < 0.08:
            words = texts[rng.randrange(i)].split(" ")
            words[rng.randrange(len(words))] = f"edit{rng.randrange(10**6)}"
            texts.append(" ".join(words))
            planted["near"] += 1
        elif i > 100 and u < 0.10:
            texts.append(texts[rng.randrange(i)])
            planted["exact"] += 1
        else:
            texts.append(" ".join(rng.sample(sentences, rng.randint(3, 6))))
        ids.append(f"doc{i:09d}")
    os.makedirs(out, exist_ok=True)
    for k in range(0, n, PART_ROWS):
        m = min(PART_ROWS, n - k)
        t = pa.table(
            {
                "id": ids[k : k + m],
                "text": texts[k : k + m],
                "source": ["web/bench"] * m,
                "url": pa.nulls(m, pa.string()),
                "meta": ["{}"] * m,
            }
        )
        pq.write_table(t, os.path.join(out, f"part-{k // PART_ROWS:05d}.parquet"))
    # the record the runner reads the upstream count from (the stage sizes its shuffles by it)
    with open(os.path.join(out, "_stage.json"), "w") as f:
        json.dump({"stage": "select", "status": "complete", "docs_out": n}, f)
    return planted


def _tally(batch):
    import pyarrow as pa
    import pyarrow.compute as pc

    g = (
        pa.table({"reason": pc.fill_null(batch["drop_reason"], "")})
        .group_by("reason")
        .aggregate([("reason", "count")])
    )
    return g.rename_columns(["reason", "docs"])


def measure(out: str) -> None:
    """One size in this process: the stage on `out`/select, its output tallied; prints a JSON line."""
    import psutil
    import ray

    from pipeline.config import parse_config
    from pipeline.runner import read_docs
    from pipeline.stage import StageContext
    from pipeline.stages.dedup import stage

    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=1024 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # as pipeline.runtime
    config = parse_config({"ingest": {"inputs": [{"path": str(common.OSE), "source": "web/x"}]}, "dedup": {}})
    ctx = StageContext("dedup", config, out, os.path.join(out, ".dedup.work"), lambda up: read_docs(out, up))
    me, peak, stop = psutil.Process(), [0], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.02)

    start_rss = me.memory_info().rss
    sampler = threading.Thread(target=poll, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    result = stage.run(ctx)
    counts: dict[str, int] = {}
    for row in result.docs.map_batches(_tally, batch_format="pyarrow").iter_rows():
        counts[row["reason"]] = counts.get(row["reason"], 0) + row["docs"]
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    print(
        json.dumps(
            {
                "wall_s": round(wall, 1),
                "start_rss_mb": round(start_rss / 2**20),
                "peak_rss_mb": round(peak[0] / 2**20),
                "counts": counts,
                "details": result.details,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="50000,200000")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one size, in a run output directory
    args = ap.parse_args()
    if args.measure:
        measure(args.measure)
        return
    peaks = []
    for n in [int(x) for x in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(prefix="phicurate-dedup-mem-") as tmp:
            planted = corpus(n, os.path.join(tmp, "select"))
            r = subprocess.run(
                [sys.executable, __file__, "--measure", tmp],
                capture_output=True,
                text=True,
            )
            if r.returncode:
                sys.exit(f"{n} documents: the measuring process failed\n{r.stderr[-4000:]}")
            res = json.loads(r.stdout.strip().splitlines()[-1])
        peaks.append(res["peak_rss_mb"])
        print(
            f"{n} docs (planted {planted}): {res['wall_s']} s, driver RSS at start {res['start_rss_mb']} MB, "
            f"peak {res['peak_rss_mb']} MB; dropped {res['counts']}; details {res['details']}",
            flush=True,
        )
    print(f"ratio: {peaks[-1] / peaks[0]:.3f}")


if __name__ == "__main__":
    main()
