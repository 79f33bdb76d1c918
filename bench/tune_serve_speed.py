"""`phicurate tune OUTPUT --serve`: how fast the page answers one threshold change over 1,000,000 documents.

    .venv/bin/python bench/tune_serve_speed.py [--from OUTPUT] [--docs 1000000] [--changes 30]

The rows are real annotate output replicated: the signal columns of OUTPUT/annotate (default: ingest +
annotate run here on the first 200 documents of the bundled onestopenglish corpus, split into two sources),
tiled to --docs rows with unique ids and written as ten Parquet parts. Text is cut to the page's excerpt
length (700 characters) so that a million copies fit on disk: the margin-text figure reads less than real
documents would.

The server is the user's path: `phicurate tune TMP --serve --port 0 --config ...` in a subprocess, asked
over HTTP (POST /api/evaluate, what the page sends when a slider moves: totals, per source, drop reasons,
the histogram of documents passing the other rules and the margin documents). Each change sets a threshold
not asked before, so its rule's failure mask is never cached. Reported: the median over --changes such
changes (after 3 warm-up ones) per setting and over all of them; for reference, select's own evaluation
of all rules (rules.first_failure) once over the first 100,000 of these rows in-process.
Ends with `ratio: 200 / median ms` (the issue's 200 ms budget over our median; above 1 = within budget).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
import zstandard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pipeline import storage  # noqa: E402
from pipeline.stages.select import rules  # noqa: E402
from pipeline.stages.select.config import SelectConfig  # noqa: E402

PARTS = 10
EXCERPT = 700
REFERENCE_ROWS = 100_000  # select's own evaluation takes minutes on a million rows here
SETTINGS = {  # setting -> (low, high) of the thresholds tried
    "gopher_quality.min_doc_words": (20, 400),
    "fineweb_quality.line_punct_thr": (0.01, 0.3),
    "lang_score": (0.5, 0.95),
    "gopher_repetition.top_n_grams.2": (0.05, 0.3),
}


def annotate_demo(tmp: str) -> str:
    """ingest + annotate through the runner on 200 real documents (two sources); returns the output."""
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # an in-process Ray, as the other benches start it
    src = os.path.join(ROOT, "tests", "data", "demo", "onestopenglish.jsonl.zst")
    lines = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(src, "rb")), encoding="utf-8")
    rows = [next(lines) for _ in range(200)]
    inputs = []
    for name, part in (("a", rows[:100]), ("b", rows[100:])):
        path = os.path.join(tmp, f"{name}.jsonl")
        with open(path, "w") as f:
            f.write("".join(part))
        inputs.append({"path": path, "source": f"web/{name}"})
    cfg = {
        "run": {"output": os.path.join(tmp, "real")},
        "ray": {"num_cpus": 2, "object_store_memory_mb": 512, "progress_bars": False},
        "ingest": {"inputs": inputs},
        "annotate": {"workers": 1, "batch_size": 32},
    }
    path = os.path.join(tmp, "real.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    run_pipeline(load_config(path), stages=["ingest", "annotate"], log=lambda m: None)
    return cfg["run"]["output"]


def replicate(real: str, dst: str, n: int) -> tuple[pa.Table, int]:
    files = storage.list_files(storage.join(real, "annotate"), suffix=".parquet")
    table = pa.concat_tables(pq.read_table(f) for f in files)
    table = table.set_column(
        table.column_names.index("text"), "text", pc.utf8_slice_codeunits(table["text"], 0, EXCERPT)
    )
    reps = -(-n // len(table))
    big = pa.concat_tables([table] * reps).slice(0, n)
    ids = pc.binary_join_element_wise(big["id"], pa.array(np.arange(n).astype(str)), "#")
    big = big.set_column(big.column_names.index("id"), "id", ids)
    os.makedirs(os.path.join(dst, "annotate"))
    per = -(-n // PARTS)
    for p in range(PARTS):
        pq.write_table(big.slice(p * per, per), os.path.join(dst, "annotate", f"part-{p:03d}.parquet"))
    return big, len(table)


def post(url: str, body: dict) -> tuple[float, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        data = json.loads(r.read())
    return 1000 * (time.perf_counter() - t0), data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--from", dest="real", help="an output with annotate done (default: annotate 200 docs here)"
    )
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--changes", type=int, default=30)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="tune-serve-bench-") as tmp:
        real = args.real or annotate_demo(tmp)
        t0 = time.perf_counter()
        big, n_real = replicate(real, os.path.join(tmp, "big"), args.docs)
        print(
            f"{args.docs} rows: the {n_real} rows of real annotate output ({real}) "
            f"replicated, text cut to {EXCERPT} chars: {time.perf_counter() - t0:.1f} s"
        )
        # no --config and no select run there: the page starts from select's defaults
        cmd = [sys.executable, "-m", "pipeline.tools.cli", "tune", os.path.join(tmp, "big"), "--serve"]
        t0 = time.perf_counter()
        proc = subprocess.Popen([*cmd, "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            for line in proc.stdout:
                if "serving http://" in line:
                    break
            url = line.split("serving ")[1].split()[0]
            print(f"server up in {time.perf_counter() - t0:.1f} s: {line.strip()}")
            with urllib.request.urlopen(url + "api/init") as r:
                init = json.loads(r.read())
            print(f"page's first answer (all settings, histograms): {init['totals']['ms']} ms server time")
            medians, every_ms = {}, []
            server_ms = []
            text_ms = []
            for key, (lo, hi) in SETTINGS.items():
                integer = next(p for p in init["params"] if p["key"] == key)["integer"]
                seen: set = set()
                times = []
                for i in range(args.changes + 3):
                    while True:
                        t = int(rng.integers(lo, hi)) if integer else round(float(rng.uniform(lo, hi)), 6)
                        if t not in seen:
                            break
                    seen.add(t)
                    ms, ans = post(url + "api/evaluate", {"values": {key: t}, "on": {}, "active": key})
                    assert "error" not in ans, ans
                    if i >= 3:
                        times.append(ms)
                        server_ms.append(ans["ms"])
                    if i == 3 and ans.get("margin"):
                        rows = [d["row"] for side in ("kept", "dropped") for d in ans["margin"][side]]
                        for _ in range(5):
                            text_ms.append(post(url + "api/texts", {"rows": rows})[0])
                medians[key] = statistics.median(times)
                every_ms += times
                print(
                    f"  {key}: median {medians[key]:.1f} ms, p90 {np.quantile(times, 0.9):.1f} ms "
                    f"over {len(times)} new thresholds (kept {ans['kept_docs']} of {ans['docs']})"
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        every = statistics.median(every_ms)
        print(
            f"median over all {len(every_ms)} changes (HTTP round trip): {every:.1f} ms, "
            f"p90 {np.quantile(every_ms, 0.9):.1f} ms"
        )
        print(f"  of which server compute (median): {statistics.median(server_ms):.1f} ms")
        if text_ms:
            print(
                f"margin texts (10 documents read back from Parquet): median "
                f"{statistics.median(text_ms):.1f} ms"
            )

        sample = big.slice(0, REFERENCE_ROWS)
        t0 = time.perf_counter()
        reason, _ = rules.first_failure(sample, SelectConfig())
        print(
            f"reference: select's own rule evaluation (rules.first_failure, with drop_detail) once over the "
            f"first {len(sample)} rows in-process: {1000 * (time.perf_counter() - t0):.0f} ms"
        )
        print("excluded: writing the rows, server start-up, the 3 warm-up changes per setting, the browser")
        print(
            f"ratio: {200 / every:.3f}  (200 ms budget / median ms per threshold change; >1: within budget)"
        )


if __name__ == "__main__":
    main()
