"""WARC pages per second per core: the ingest stage, run on Ray as a user runs it, against a bare
`trafilatura.extract` loop over the same pages, at the demo size and at 8 copies of it.

    .venv/bin/python bench/ingest_throughput.py [--copies 1 8] [--repeats 3] [--pages N] [--cpus N]

Input: the demo's WARC files (tests/data/demo/*.warc.gz; --pages N keeps the first N records of each), and
for k copies, k directories of them, each its own input with its own `source` (so no id repeats and the
duplicate-id pass finds nothing to rewrite, as on a real crawl). Ours: `run_pipeline(stages=["ingest"],
force=True)` on an in-process Ray of --cpus CPUs (default: this machine's), reading the files, extracting
in datatrove's sandbox, checking and writing Parquet parts with their commits; per core = pages / wall /
CPUs. Bare: `trafilatura.extract` with the options ingest passes (datatrove's Trafilatura: favor_precision,
include_comments=False, deduplicate=False) over the HTML our reader decoded beforehand, in memory, two ways:
one loop in one process while the machine is otherwise idle (the figure issue 16 names), and one loop per
core at once (--cpus processes sharing the pages), which is how ours uses the machine: cores that run
together share caches, memory bandwidth and clock, so a lone loop's per-core speed is not what a full
machine gives per core. Same trafilatura on every side (its version is printed).
All warm: Ray is started and one small ingest is run before any timing (workers started, trafilatura
imported in them), and every bare loop extracts the same warm-up pages first. Within each repeat the three
sides run one after another, each first once in three repeats; the median of the repeats is reported.
Excluded from the timing: Ray's start and the warm-up (all sides), and for the bare sides reading,
decompressing and decoding the WARC, starting the bare processes and sending them the pages, and writing.
Ends with `ratio: <ours per core / bare per core with a loop on every core, at the largest number of
copies, medians>`; the ratio against the lone loop is printed beside it.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import zlib

import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.config import load_config  # noqa: E402
from pipeline.runner import run_pipeline  # noqa: E402
from pipeline.stages.ingest.readers import InputFile, read_warc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "tests", "data", "demo")


def first_records(src: str, dst: str, n: int | None) -> None:
    """Copy `src` with only its first n gzip members (one WARC record each), or whole."""
    data = open(src, "rb").read()
    if n is not None:
        at = 0
        for _ in range(n):
            d = zlib.decompressobj(31)
            d.decompress(data[at:])
            at = len(data) - len(d.unused_data)
            if not d.unused_data:
                break
        data = data[:at]
    with open(dst, "wb") as f:
        f.write(data)


def pages_of(paths: list[str]) -> list[str]:
    html = []
    for p in paths:
        f = InputFile(p, os.path.basename(p), "bench/x", "warc")
        html += [r["html"] for r in read_warc(f, 10_000_000, {}) if r["html"] is not None]
    return html


def bare(pages: list[str]) -> float:
    """Seconds to extract `pages` with trafilatura in this process, as ingest's extractor calls it."""
    from trafilatura import extract

    t0 = time.perf_counter()
    for html in pages:
        extract(html, favor_precision=True, include_comments=False, deduplicate=False)
    return time.perf_counter() - t0


_PAGES: list[str] = []  # one copy's pages, in each bare worker


def _init_worker(pages: list[str], warm: list[str]) -> None:
    """A bare worker: holds one copy's pages (sent once, when the pool starts) and is warmed like the
    one-core loop, both outside the timing."""
    _PAGES[:] = pages
    bare(warm)


def _extract_range(lo_hi: tuple[int, int]) -> int:
    bare([_PAGES[i % len(_PAGES)] for i in range(*lo_hi)])  # copy c's page i is page i of the copy
    return lo_hi[1] - lo_hi[0]


def bare_all_cores(pool, n: int, cpus: int) -> float:
    """Seconds for `cpus` bare loops, one per core at once, to extract n pages (the copies' pages) between
    them, as ingest's workers share the cores: per core = n / seconds / cpus."""
    bounds = [(n * i // cpus, n * (i + 1) // cpus) for i in range(cpus)]
    t0 = time.perf_counter()
    assert sum(pool.map(_extract_range, bounds, chunksize=1)) == n
    return time.perf_counter() - t0


def ours(tmp: str, inputs: list[dict], cpus: int, tag: str) -> float:
    cfg = {
        "run": {"output": os.path.join(tmp, f"out-{tag}")},
        "ray": {"num_cpus": cpus, "progress_bars": False},
        "ingest": {"inputs": inputs},
    }
    path = os.path.join(tmp, f"{tag}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    t0 = time.perf_counter()
    [rec] = run_pipeline(load_config(path), stages=["ingest"], force=True, log=lambda m: None)
    wall = time.perf_counter() - t0
    if rec["details"]["parts_rewritten_for_duplicate_ids"]:
        sys.exit("the copies repeat ids: the bench would time duplicate rewrites")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3, help="runs per side and size (median reported)")
    ap.add_argument("--pages", type=int, default=None, help="keep the first N records of each WARC file")
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import trafilatura

    print(f"trafilatura {trafilatura.__version__}; Ray with {args.cpus} CPUs; load {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        warcs = sorted(f for f in os.listdir(DEMO) if f.endswith(".warc.gz"))
        base = os.path.join(tmp, "base")
        os.makedirs(base)
        for w in warcs:
            first_records(os.path.join(DEMO, w), os.path.join(base, w), args.pages)
        pages = pages_of([os.path.join(base, w) for w in warcs])
        print(f"{len(pages)} HTML pages per copy ({sum(map(len, pages)) / 1e6:.1f} M characters)")
        warm = os.path.join(tmp, "warm")
        os.makedirs(warm)
        first_records(os.path.join(base, warcs[0]), os.path.join(warm, warcs[0]), 5)
        ours(tmp, [{"path": warm, "source": "bench/warm"}], args.cpus, "warm")  # starts Ray
        warm_pages = pages_of([os.path.join(warm, warcs[0])])
        bare(warm_pages)
        # spawned, not forked: this process runs Ray's threads
        pool = multiprocessing.get_context("spawn").Pool(args.cpus, _init_worker, (pages, warm_pages))
        results = {}
        sides = ("ours", "bare", "bare_all")
        for k in args.copies:
            inputs = []
            for c in range(k):
                d = os.path.join(tmp, f"copies{k}", str(c))
                os.makedirs(d)
                for w in warcs:
                    os.link(os.path.join(base, w), os.path.join(d, w))
                inputs.append({"path": d, "source": f"bench/c{c}"})
            n = len(pages) * k
            walls: dict[str, list[float]] = {side: [] for side in sides}
            for r in range(args.repeats):
                for side in sides[r % 3 :] + sides[: r % 3]:  # each side goes first once in three repeats
                    if side == "ours":
                        walls[side].append(ours(tmp, inputs, args.cpus, f"{k}x{r}"))
                    elif side == "bare":
                        walls[side].append(bare(pages * k))
                    else:
                        walls[side].append(bare_all_cores(pool, n, args.cpus))
                    print(f"  {k}x run {r + 1} {side}: {walls[side][-1]:.1f} s", flush=True)
            med = {s: statistics.median(w) for s, w in walls.items()}
            # per core: ours and the pool over every CPU, the lone loop over its one
            pc = {s: n / med[s] / (1 if s == "bare" else args.cpus) for s in sides}
            results[k] = pc
            print(
                f"{k}x ({n} pages), median of {args.repeats}: ours {pc['ours']:.2f} pages/s per core "
                f"({args.cpus} CPUs); bare loops on all {args.cpus} cores at once {pc['bare_all']:.2f} per "
                f"core, ratio {pc['ours'] / pc['bare_all']:.3f}; one bare loop alone on an otherwise idle "
                f"machine {pc['bare']:.2f}, ratio {pc['ours'] / pc['bare']:.3f}"
            )
        pool.close()
    print(
        "excluded: Ray start and warm-up (all sides); bare: reading, decompressing and decoding the WARC, "
        f"starting the bare workers and sending them the pages, and writing. load at the end "
        f"{os.getloadavg()}"
    )
    last = results[max(args.copies)]
    print(f"ratio: {last['ours'] / last['bare_all']:.3f}")


if __name__ == "__main__":
    main()
