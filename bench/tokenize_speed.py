"""Tokenization throughput of the mix stage (Phi-3 tokenizer, Ray map_batches, shards written) against a bare
`tokenizers` batch encode of the same text, in MB of UTF-8 text per second per core.

    .venv/bin/python bench/tokenize_speed.py [--output out/demo] [--cpus 2]

Reads the demo corpus's ingested documents (running ingest into --output if it is missing), runs the mix
stage on them in a scratch directory with a one-source recipe, and times it end to end (Ray start excluded,
worker start, tokenization, EOS, shard writing, manifest included). The baseline encodes the same texts on one
thread with `Tokenizer.encode_batch_fast` in batches of the stage's batch size. Ends with
`ratio: <stage MB/s per core / bare MB/s per core>`.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the baseline runs on one core; so does each Ray task

import pyarrow.parquet as pq  # noqa: E402

from pipeline.config import load_config, parse_config  # noqa: E402
from pipeline.runner import read_record, run_pipeline  # noqa: E402
from pipeline.tokenizer import PHI3_OFFLINE, load_tokenizer, plain_text_encoder  # noqa: E402

BATCH = 256


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--output", default=str(ROOT / "out" / "demo"))
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    if read_record(args.output, "ingest") is None:
        print(f"no complete ingest in {args.output}: running it (phicurate run configs/demo.yaml --stages ingest)")
        run_pipeline(load_config(ROOT / "configs" / "demo.yaml", output=args.output), stages=["ingest"])
    parts = sorted(glob.glob(os.path.join(args.output, "ingest", "*.parquet")))
    texts = [t for t in pq.read_table(parts, columns=["text"])["text"].to_pylist() if t]
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    print(f"text: {len(texts)} documents, {mb:.1f} MB (demo corpus, ingested)")

    backend = plain_text_encoder(load_tokenizer(str(PHI3_OFFLINE)))
    t0 = time.perf_counter()
    n_bare = sum(len(e.ids) + 1 for i in range(0, len(texts), BATCH) for e in backend.encode_batch_fast(texts[i : i + BATCH], add_special_tokens=False))
    bare_s = time.perf_counter() - t0
    bare = mb / bare_s
    print(f"bare tokenizers encode_batch_fast, 1 thread: {bare_s:.2f} s, {n_bare:,} tokens, {bare:.2f} MB/s per core")

    scratch = tempfile.mkdtemp(prefix="tokenize-speed-")
    try:
        shutil.copytree(os.path.join(args.output, "ingest"), os.path.join(scratch, "ingest"))
        recipe = {"sources": [{"name": "web", "stage": "ingest", "weight": 1.0}]}
        config = parse_config({
            "run": {"output": scratch, "stages": ["mix"]},
            "ray": {"num_cpus": args.cpus, "object_store_memory_mb": 512, "progress_bars": False},
            "ingest": {"inputs": [{"path": str(ROOT / "tests/data/demo/onestopenglish.jsonl.zst"), "source": "web/onestopenglish"}]},
            "mix": {"tokenizer": str(PHI3_OFFLINE), "batch_size": BATCH, "shard_tokens": 1_000_000, "phase1": recipe, "phase2": recipe},
        })
        import ray

        from pipeline.runtime import init_ray

        init_ray(config.ray)  # Ray's own start is not the stage's work
        t0 = time.perf_counter()
        rec = run_pipeline(config, log=lambda _: None)[0]
        stage_s = time.perf_counter() - t0
        cores = int(ray.cluster_resources().get("CPU", args.cpus))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ours = mb / stage_s / cores
    print(f"mix stage ({cores} cores, both phases from one tokenization, {rec['tokens_out']:,} tokens written): "
          f"{stage_s:.2f} s, {mb / stage_s:.2f} MB/s, {ours:.2f} MB/s per core")
    assert rec["details"]["phase1"]["tokens"] == n_bare, "the stage and the bare encode disagree on the token count"
    print(f"  of which tokenizing in Ray and streaming to disk: {rec['details']['tokenize_s']} s; sampling, shuffling, "
          f"writing shards: {rec['details']['write_s']} s")
    print(f"ratio: {ours / bare:.3f}")


if __name__ == "__main__":
    main()
