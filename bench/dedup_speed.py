"""Dedup throughput and peak memory: ours (Ray) against datatrove's MinHash pipeline (its four steps on
LocalPipelineExecutor), same documents, same settings (word 5-grams, 14 bands x 8 rows), same 2 cores.

Input: the demo corpus's web documents and OneStopEnglish, at 1x, 2x and 4x: each extra copy has 10% of
its words replaced, so it is mostly not a duplicate (a corpus where most documents are unique).
Fair terms: at each scale the documents are written once, outside the timing, as Parquet parts that both
sides read (ours with ray.data.read_parquet, as the stage reads its input; datatrove with its
ParquetReader), and both are timed from reading those parts to their written output. Both warm: Ray is
started and each side runs once on 200 documents before any timing (datatrove's worker processes are
started by its executor in every run, as they are for a user). Each scale is run --repeats times, the two
sides alternating (load from other processes falls on both alike); the median is reported. Excluded:
Ray's start, the warm-up runs, writing the input parts. Peak memory: resident memory of this process and
all its descendants (Ray's daemons and workers; datatrove's workers), sampled every 50 ms.

    .venv/bin/python bench/dedup_speed.py [--output out/demo] [--scales 1,2,4] [--repeats 3]
Ends with `ratio: <our docs/s / datatrove docs/s at the largest scale, medians>`.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _dedup_common as common  # noqa: E402

from pipeline.stages.dedup.config import DedupConfig  # noqa: E402


def scaled(base: pa.Table, k: int) -> pa.Table:
    rng = random.Random(k)
    ids, texts = base["id"].to_pylist(), base["text"].to_pylist()
    out_ids, out_texts = list(ids), list(texts)
    for c in range(1, k):
        out_ids += [f"{i}-x{c}" for i in ids]
        out_texts += [
            " ".join(f"y{rng.randrange(10**6)}" if rng.random() < 0.1 else w for w in t.split(" "))
            for t in texts
        ]
    return pa.table({"id": out_ids, "text": out_texts})


def signature_costs(texts: list[str], cfg: DedupConfig) -> None:
    """Where per-document time goes: shingling, and datasketch's MinHash with its default SHA-1 shingle
    hash per document, with `MinHash.bulk`, and with `bulk` + xxh32 (what the stage uses)."""
    import xxhash
    from datasketch import MinHash

    from pipeline.stages.dedup.minhash import shingles

    t0 = time.perf_counter()
    sets = [shingles(t, cfg.ngram) for t in texts]
    t_sh = time.perf_counter() - t0
    variants = {
        "MinHash per doc, SHA-1": lambda: [
            MinHash(num_perm=cfg.num_perm, seed=cfg.seed).update_batch(s) for s in sets
        ],
        "MinHash.bulk, SHA-1": lambda: MinHash.bulk(sets, num_perm=cfg.num_perm, seed=cfg.seed),
        "MinHash.bulk, xxh32": lambda: MinHash.bulk(
            sets, num_perm=cfg.num_perm, seed=cfg.seed, hashfunc=xxhash.xxh32_intdigest
        ),
    }
    print(f"signatures, one core, {len(texts)} documents: shingling {1000 * t_sh / len(texts):.2f} ms/doc")
    for name, fn in variants.items():
        t0 = time.perf_counter()
        fn()
        print(f"  {name:24s}: {1000 * (time.perf_counter() - t0) / len(texts):.2f} ms/doc")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--output", default="out/demo", help="demo run output holding ingest/ (ingest is run if missing)"
    )
    ap.add_argument("--scales", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=3, help="runs per side and scale (median reported)")
    args = ap.parse_args()

    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=2, object_store_memory=512 * 2**20, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray_start = time.perf_counter() - t0
    cfg = DedupConfig()
    b, r = cfg.bands_rows()
    base = pa.concat_tables(
        [common.demo_docs(args.output), common.onestopenglish()], promote_options="permissive"
    )
    print(f"setting: {cfg.describe()}; input 1x = {base.num_rows} documents, 2 CPUs each")
    signature_costs(base["text"].to_pylist()[:400], cfg)
    t0 = time.perf_counter()
    warm = base.slice(0, 200)
    common.run_ours(warm, cfg)
    ours_warm = time.perf_counter() - t0
    work = common.tmpdir()
    t0 = time.perf_counter()
    common.run_datatrove(warm, b, r, cfg.ngram, workers=2, workdir=work)
    dt_warm = time.perf_counter() - t0
    shutil.rmtree(work)
    print(
        f"excluded from the timing: Ray start {ray_start:.1f} s, warm-up on 200 documents (ours "
        f"{ours_warm:.1f} s, datatrove {dt_warm:.1f} s), writing the shared input Parquet parts"
    )
    ratio = None
    for k in [int(x) for x in args.scales.split(",")]:
        docs = scaled(base, k)
        mb = sum(len(t.encode()) for t in docs["text"].to_pylist()) / 2**20
        shared = common.tmpdir()
        inp = common.write_input(docs, shared, max(2, docs.num_rows // 500))
        walls: dict[str, list[float]] = {"ours": [], "datatrove": []}
        for rep in range(args.repeats):
            for name in ("ours", "datatrove"):  # alternating, so machine load falls on both alike
                work = common.tmpdir()
                with common.PeakRSS() as mem:
                    t0 = time.perf_counter()
                    if name == "ours":
                        labels = common.run_ours(docs, cfg, write_to=work + "/out", inp=inp)
                    else:
                        labels = common.run_datatrove(docs, b, r, cfg.ngram, workers=2, workdir=work, inp=inp)
                    wall = time.perf_counter() - t0
                shutil.rmtree(work)
                walls[name].append(wall)
                merged = len(common.cluster_pairs(labels))
                print(
                    f"{k}x ({docs.num_rows} docs, {mb:.0f} MB text) run {rep + 1} {name:9s}: {wall:6.1f} s, "
                    f"{docs.num_rows / wall:7.1f} docs/s, peak RSS {mem.peak / 2**20:6.0f} MB, "
                    f"pairs merged {merged}",
                    flush=True,
                )
        shutil.rmtree(shared)
        med = {name: statistics.median(w) for name, w in walls.items()}
        ratio = med["datatrove"] / med["ours"]
        print(
            f"{k}x median of {args.repeats}: ours {docs.num_rows / med['ours']:.1f} docs/s, datatrove "
            f"{docs.num_rows / med['datatrove']:.1f} docs/s, ours/datatrove {ratio:.3f}"
        )
    print(f"ratio: {ratio:.3f}")


if __name__ == "__main__":
    main()
