"""`phicurate tune` on a generated million-document signal table: seconds per call, against evaluating
select's rules once per threshold (what rerunning `select` for each candidate threshold computes).

Fair terms: the baseline reads only the columns the rules use (not the text) once, with pyarrow's
projection, as tune does, and counts with Arrow compute (each rule's failing mask, OR-ed; no drop
reasons). Both sides read the same Parquet files in the same run (the OS's page cache warm for both: the
files were just written), each reads them afresh inside its timing, the sides alternate --repeats times and
the medians are reported. What tune does and the baseline does not: draw the histogram PNG (inside tune's
timing).

The table has every column annotate writes (language, n_words, all heuristic values, edu_score) plus a text
column, as Parquet parts like OUTPUT/annotate/; the other rules are those of configs/demo.yaml.
Ends with `ratio: baseline seconds / tune seconds`.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.config import load_config  # noqa: E402
from pipeline.stages.annotate.signals import SIGNAL_FIELDS  # noqa: E402
from pipeline.stages.select import rules  # noqa: E402
from pipeline.tools.tune import tune  # noqa: E402

PARTS = 10
CONFIG = "configs/demo.yaml"


def generate(n: int, rng: np.random.Generator) -> pa.Table:
    """Plausible values: most documents English, word counts log-normal, ratios in [0, 1]."""
    cols: dict[str, pa.Array] = {
        "id": pa.array([f"doc{i:08d}" for i in range(n)]),
        "source": pa.array(np.where(rng.random(n) < 0.5, "web/a", "web/b")),
    }
    words = rng.lognormal(6, 1, n).astype(np.int64)
    alphabet = np.frombuffer(b"abcdefghij klmnopqrst uvwxyz ", dtype=np.uint8)
    pool = alphabet[rng.integers(0, len(alphabet), 1_000_000)].tobytes().decode()
    starts = rng.integers(0, len(pool) - 200, n)
    cols["text"] = pa.array([pool[s : s + 200] for s in starts], pa.large_string())
    for f in SIGNAL_FIELDS:
        if f.name == "lang":
            cols[f.name] = pa.array(np.where(rng.random(n) < 0.8, "en", "fr"))
        elif f.name in ("n_words", "gopher_words"):
            cols[f.name] = pa.array(words)
        elif f.name in ("c4_lorem_line", "c4_curly_line"):
            cols[f.name] = pa.array(np.where(rng.random(n) < 0.02, 3, -1), pa.int64()).filter(
                pa.array(np.ones(n, bool))
            )
            cols[f.name] = pa.array([3 if v == 3 else None for v in cols[f.name].to_pylist()], pa.int64())
        elif pa.types.is_integer(f.type):
            cols[f.name] = pa.array(rng.integers(0, 40, n))
        else:
            cols[f.name] = pa.array(rng.beta(1, 6, n) if f.name != "lang_score" else rng.beta(6, 1, n))
    cols["gopher_avg_word_length"] = pa.array(rng.normal(5, 1, n))
    cols["gopher_alpha_words_ratio"] = pa.array(rng.beta(12, 1, n))
    cols["fw_line_punct_ratio"] = pa.array(rng.beta(4, 2, n))
    cols["edu_score"] = pa.array(rng.beta(2, 3, n))
    return pa.table(cols)


def baseline(output: str, thresholds: list[float]) -> tuple[float, list[int]]:
    """Select's rules at each threshold, the way a user counts with pyarrow: the rule columns read once
    (no text), each rule's failing mask (Arrow compute) OR-ed, the documents passing every rule counted
    (no drop reasons or details, which select also writes but a count does not need)."""
    select = load_config(CONFIG).select
    t0 = time.perf_counter()
    files = sorted(os.path.join(output, "annotate", f) for f in os.listdir(os.path.join(output, "annotate")))
    needed = rules.columns(rules.rules(select.model_copy(update={"edu_score": 0.5})))
    table = pa.concat_tables(pq.read_table(f, columns=needed) for f in files)
    kept = []
    for t in thresholds:
        failed = functools.reduce(
            pc.or_, (r.fails(table) for r in rules.rules(select.model_copy(update={"edu_score": t})))
        )
        kept.append(int(len(table) - pc.sum(failed).as_py()))
    return time.perf_counter() - t0, kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side (median reported)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
        os.makedirs(os.path.join(tmp, "annotate"))
        t0 = time.perf_counter()
        per = -(-args.docs // PARTS)
        for p in range(PARTS):
            n = min(per, args.docs - p * per)
            pq.write_table(generate(n, rng), os.path.join(tmp, "annotate", f"part-{p:03d}.parquet"))
        size = sum(
            os.path.getsize(os.path.join(tmp, "annotate", f))
            for f in os.listdir(os.path.join(tmp, "annotate"))
        )
        print(
            f"generated {args.docs} documents x {len(SIGNAL_FIELDS) + 5} columns, {size / 1e6:.0f} MB of "
            f"Parquet in {time.perf_counter() - t0:.1f} s"
        )

        tune_s, base_s, thresholds = [], [], None
        for r in range(args.repeats):  # alternating, so load on the machine falls on both alike
            t0 = time.perf_counter()
            s = tune(tmp, "edu_score", config_path=CONFIG, keep="above", out=io.StringIO())
            tune_s.append(time.perf_counter() - t0)
            thresholds = [t for t, _, _ in s.rows]
            base, kept = baseline(tmp, thresholds)
            base_s.append(base)
            assert kept == [d for _, d, _ in s.rows], "tune's counts differ from select's rule evaluation"
            print(f"run {r + 1}: tune {tune_s[-1]:.2f} s, baseline {base:.2f} s; same counts", flush=True)
        ours, base = statistics.median(tune_s), statistics.median(base_s)
        print(f"tune --signal edu_score (21 thresholds, histogram PNG): median {ours:.2f} s")
        print(
            f"baseline, select's rules as Arrow masks once per threshold ({len(thresholds)} thresholds, "
            f"rule columns only): median {base:.2f} s"
        )
        t0 = time.perf_counter()
        tune(tmp, "edu_score", config_path=CONFIG, keep="above", n_samples=5, at=[0.5], out=io.StringIO())
        print(f"tune --at 0.5 --samples 5 (not in the ratio): {time.perf_counter() - t0:.2f} s")
        print(
            "excluded from both timings: generating and writing the table; the first run includes "
            "importing matplotlib on tune's side"
        )
        print(f"ratio: {base / ours:.3f}")


if __name__ == "__main__":
    main()
