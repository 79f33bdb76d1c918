"""How the pipeline scales: the same stages on a corpus of N and of 4N short documents, each stage's wall time
and its driver's peak RSS at both sizes (issue 14).

    .venv/bin/python bench/scale.py [--n 250000] [--stages ingest,annotate,select,dedup,mix] [--workdir DIR]

The corpus is JSONL of short documents (2 to 8 real English sentences drawn from the bundled OneStopEnglish
articles) in files of 20,000 documents (N/10 for a smaller N, so 4N has four times the files); 5% of them
are near-copies of a recent document with one word changed, for dedup to find. Each size is run as a user
runs it: `phicurate run` on a config, one stage per fresh driver process (`--stages X`), so a stage's peak
RSS is its own and not what an earlier stage left on the heap. The driver reports its own peak RSS and CPU
time (getrusage(RUSAGE_SELF)) as it exits; Ray's workers are other processes and are not counted.

Goals, per stage: the driver's peak RSS at 4N at most 1.25x that at N (nothing that grows with the corpus
lives on the driver), the stage's time at 4N at most 4.6x that at N. Times are the stage's own (`wall_s` of
its `_stage.json`); excluded are writing the corpus and each driver's start (imports, Ray start), printed as
`start s`. Ends with `ratio: <4 * time(N) / time(4N)>` over the whole run (the sum of the stages' times):
1.0 is linear, above 1 better than linear. Needs about 2 KB of disk per document (corpus and outputs).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGES = ("ingest", "annotate", "select", "dedup", "mix")
DOCS_PER_FILE = 20_000
NEAR_COPY_SHARE = 0.05
RSS_GOAL, TIME_GOAL = 1.25, 4.6
# Ray gives its raylet a fixed 30 s to register; on a heavily loaded machine a driver may fail to start, and
# is started again (a failed start is no part of the stage's time)
RAY_START_TIMEOUT = "The current node timed out during startup"
STARTS = 3


def sentences() -> list[str]:
    """Real English sentences: the bundled OneStopEnglish articles cut at sentence ends (about 25,000)."""
    import io

    import zstandard

    src = ROOT / "tests" / "data" / "demo" / "onestopenglish.jsonl.zst"
    out = set()
    with open(src, "rb") as f:
        for line in io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8"):
            for s in re.split(r"(?<=[.!?])\s+", json.loads(line)["text"]):
                if 30 <= len(s.strip()) <= 300:
                    out.add(s.strip())
    return sorted(out)


def write_corpus(d: Path, n: int, per_file: int, seed: int = 0) -> None:
    """`n` documents in JSONL files of `per_file`: 2 to 8 sentences each, some near-copies of a recent
    document (one word replaced)."""
    rng = random.Random(seed)
    pool = sentences()
    recent: deque[str] = deque(maxlen=2000)
    d.mkdir(parents=True, exist_ok=True)
    for f, start in enumerate(range(0, n, per_file)):
        with open(d / f"web-{f:05d}.jsonl", "w") as fo:
            for i in range(start, min(n, start + per_file)):
                if recent and rng.random() < NEAR_COPY_SHARE:
                    words = rng.choice(recent).split()
                    words[rng.randrange(len(words))] = rng.choice(["indeed", "also", "often", "still"])
                    text = " ".join(words)
                else:
                    text = " ".join(rng.sample(pool, rng.randint(2, 8)))
                recent.append(text)
                fo.write(json.dumps({"id": f"d{i:09d}", "text": text}) + "\n")


def config(corpus: Path, out: Path, cpus: int) -> dict:
    web = {"name": "web", "stage": "dedup", "weight": 1.0}
    return {
        "run": {"name": "scale", "output": str(out)},
        "ray": {"num_cpus": cpus, "object_store_memory_mb": 1024, "progress_bars": False},
        "ingest": {"inputs": [{"path": str(corpus), "source": "web/scale", "format": "jsonl"}]},
        "annotate": {"workers": cpus, "batch_size": 64},
        "select": {"lang": ["en"], "lang_score": 0.65},
        "dedup": {},
        "mix": {
            "tokenizer": "tests/data/tokenizer/phi3",
            "seed": 0,
            "shard_tokens": 5_000_000,
            "phase1": {"sources": [web]},
            "phase2": {"sources": [{**web, "where": ["lang_score >= 0.9"]}]},
        },
    }


def driver(cfg: str, stage: str, report: str) -> int:
    """`phicurate run CFG --stages STAGE` in this process; its own peak RSS and CPU time go to `report`."""
    from pipeline.tools.cli import main as cli

    try:
        return cli(["run", cfg, "--stages", stage])
    finally:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        Path(report).write_text(json.dumps({"rss_kb": ru.ru_maxrss, "cpu_s": ru.ru_utime + ru.ru_stime}))


def run_size(work: Path, n: int, per_file: int, stages: list[str], cpus: int) -> dict[str, dict]:
    import yaml

    corpus, out = work / f"corpus-{n}", work / f"out-{n}"
    t0 = time.time()
    write_corpus(corpus, n, per_file)
    print(f"N={n:,}: corpus written in {time.time() - t0:.0f} s ({sum(1 for _ in corpus.iterdir())} files)")
    cfg = work / f"scale-{n}.yaml"
    cfg.write_text(yaml.safe_dump(config(corpus, out, cpus)))
    results = {}
    for stage in stages:
        report = work / f"rusage-{n}-{stage}.json"
        log_path = work / f"{n}-{stage}.log"
        for attempt in range(1, STARTS + 1):
            t0 = time.time()
            with open(log_path, "w") as log:
                proc = subprocess.run(
                    [sys.executable, __file__, "--driver", str(cfg), stage, str(report)],
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            wall = time.time() - t0
            if proc.returncode == 0 or RAY_START_TIMEOUT not in log_path.read_text():
                break
            print(f"  {stage}: Ray did not start within its 30 s (attempt {attempt} of {STARTS})", flush=True)
        if proc.returncode:
            raise SystemExit(f"stage {stage} failed at N={n:,}; see {log_path}")
        rec = json.loads((out / stage / "_stage.json").read_text())
        ru = json.loads(report.read_text())
        results[stage] = {
            "time_s": rec["wall_s"],
            "start_s": wall - rec["wall_s"],
            "rss_gb": ru["rss_kb"] / 2**20,
            "cpu_s": ru["cpu_s"],
            "docs_in": rec["docs_in"],
            "docs_out": rec["docs_out"],
            "parts": rec.get("parts"),
        }
        r = results[stage]
        print(
            f"  {stage:9s} {r['time_s']:8.1f} s (start {r['start_s']:.0f} s)  driver {r['rss_gb']:.2f} GB, "
            f"{r['cpu_s']:.0f} s CPU  {r['docs_in']:,} in, {r['docs_out']:,} kept, parts {r['parts']}",
            flush=True,
        )
    return results


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--driver":
        sys.exit(driver(*sys.argv[2:]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=250_000, help="documents at the smaller size (the other is 4N)")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated, in pipeline order")
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="Ray's num_cpus")
    ap.add_argument("--workdir", help="where corpus and outputs go (default: a temporary directory, removed)")
    args = ap.parse_args()
    stages = args.stages.split(",")
    if unknown := [s for s in stages if s not in STAGES]:
        raise SystemExit(f"--stages: unknown {unknown}; this bench runs {', '.join(STAGES)}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="phicurate-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"scale: N={args.n:,} and 4N={4 * args.n:,} documents, {args.cpus} CPUs, in {work}", flush=True)
    try:
        per_file = min(DOCS_PER_FILE, max(100, args.n // 10))
        small = run_size(work, args.n, per_file, stages, args.cpus)
        large = run_size(work, 4 * args.n, per_file, stages, args.cpus)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    head = f"{'time N':>8s} {'time 4N':>8s} {'x':>5s}  {'RSS N':>7s} {'RSS 4N':>7s} {'x':>5s}"
    print(f"\n{'stage':9s} {head}  goals")
    for s in stages:
        a, b = small[s], large[s]
        tx, rx = b["time_s"] / a["time_s"], b["rss_gb"] / a["rss_gb"]
        met = [
            f"time {'met' if tx <= TIME_GOAL else 'MISSED'}",
            f"RSS {'met' if rx <= RSS_GOAL else 'MISSED'}",
        ]
        times = f"{a['time_s']:7.1f}s {b['time_s']:7.1f}s {tx:5.2f}"
        print(f"{s:9s} {times}  {a['rss_gb']:6.2f}G {b['rss_gb']:6.2f}G {rx:5.2f}  {', '.join(met)}")
    print(
        f"goals: time at 4N <= {TIME_GOAL}x and driver peak RSS at 4N <= {RSS_GOAL}x, per stage. Excluded: "
        "writing the corpus; each driver's start (imports, Ray start: 'start' above); Ray workers' memory."
    )
    total_n, total_4n = sum(small[s]["time_s"] for s in stages), sum(large[s]["time_s"] for s in stages)
    print(f"ratio: {4 * total_n / total_4n:.2f}")


if __name__ == "__main__":
    main()
