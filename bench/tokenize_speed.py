"""Tokenization throughput of the mix stage (Phi-3 tokenizer, Ray map_batches, shards written) against a bare
`tokenizers` batch encode of the same text, in MB of UTF-8 text per second per core.

    .venv/bin/python bench/tokenize_speed.py [--output out/demo] [--cpus 2] [--scales 1,8,32] [--repeats 3]

Reads the demo corpus's ingested documents (running ingest into --output if it is missing) and, for each
scale k, writes them k times over (ids suffixed, so every copy is a document of its own) into a scratch
directory (row groups of 512 documents, as stage outputs have), runs the mix stage there with a one-source
recipe, and times it end to end (Ray start excluded; worker start, reading, tokenization, EOS, shard writing
and manifests included). The baseline encodes the same texts on one thread with `Tokenizer.encode_batch_fast`
in batches of the stage's batch size. A shared machine's speed drifts by 20% within a minute, so the bare
encode runs again after each stage run and each run is compared with the mean of the bare runs on either
side; `--repeats` runs per scale, and their median is reported. The demo corpus is 15 MB, where the stage's
fixed costs (the actor pool's start) weigh; the larger scales show the throughput a real corpus sees (the
whole bench takes about 10 minutes on 2 cores).
Ends with `ratio: <stage MB/s per core / bare MB/s per core>`, the median at the largest scale.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the baseline runs on one core; so does each Ray task

import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipeline.config import load_config, parse_config  # noqa: E402
from pipeline.runner import READ_BLOCK_ROWS, read_record, run_pipeline  # noqa: E402
from pipeline.tokenizer import PHI3_OFFLINE, load_tokenizer, plain_text_encoder  # noqa: E402

BATCH = 256


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--output", default=str(ROOT / "out" / "demo"))
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--scales", default="1,8,32", help="copies of the corpus per run, comma-separated")
    ap.add_argument("--repeats", type=int, default=3, help="stage runs per scale; the ratio is their median")
    args = ap.parse_args()
    if read_record(args.output, "ingest") is None:
        print(
            f"no complete ingest in {args.output}: running it (phicurate run configs/demo.yaml --stages "
            "ingest)"
        )
        run_pipeline(load_config(ROOT / "configs" / "demo.yaml", output=args.output), stages=["ingest"])
    parts = sorted(glob.glob(os.path.join(args.output, "ingest", "*.parquet")))
    corpus = pq.read_table(parts)
    corpus = corpus.filter(pc.invert(pc.is_null(corpus["text"])))
    texts = corpus["text"].to_pylist()
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    print(f"text: {len(texts)} documents, {mb:.1f} MB (demo corpus, ingested)")

    backend = plain_text_encoder(load_tokenizer(str(PHI3_OFFLINE)))

    def bare() -> tuple[float, int]:
        """MB/s of one thread's bare batch encode of the corpus, and its tokens (with one EOS per
        document)."""
        t0 = time.perf_counter()
        n = sum(
            len(e.ids) + 1
            for i in range(0, len(texts), BATCH)
            for e in backend.encode_batch_fast(texts[i : i + BATCH], add_special_tokens=False)
        )
        s = time.perf_counter() - t0
        print(
            f"  bare tokenizers encode_batch_fast, 1 thread: {s:.2f} s, {n:,} tokens, {mb / s:.2f} MB/s per "
            "core"
        )
        return mb / s, n

    import ray

    from pipeline.runtime import init_ray

    before, n_bare = bare()
    ratio = None
    for k in [int(x) for x in args.scales.split(",")]:
        scratch = tempfile.mkdtemp(prefix="tokenize-speed-")
        ratios = []
        try:
            os.makedirs(os.path.join(scratch, "ingest"))
            for c in range(k):  # k copies, each its own part, ids made unique
                copy = corpus.set_column(
                    corpus.schema.get_field_index("id"),
                    "id",
                    pc.binary_join_element_wise(corpus["id"], f"copy{c}", "#"),
                )
                # row groups of 512 documents, as a stage that reads with `read_docs` writes its parts
                pq.write_table(
                    copy,
                    os.path.join(scratch, "ingest", f"part-{c:03d}.parquet"),
                    row_group_size=READ_BLOCK_ROWS,
                )
            shutil.copy(os.path.join(args.output, "ingest", "_stage.json"), os.path.join(scratch, "ingest"))
            recipe = {"sources": [{"name": "web", "stage": "ingest", "weight": 1.0}]}
            config = parse_config(
                {
                    "run": {"output": scratch, "stages": ["mix"]},
                    "ray": {"num_cpus": args.cpus, "object_store_memory_mb": 1024, "progress_bars": False},
                    "ingest": {
                        "inputs": [
                            {
                                "path": str(ROOT / "tests/data/demo/onestopenglish.jsonl.zst"),
                                "source": "web/onestopenglish",
                            }
                        ]
                    },
                    "mix": {
                        "tokenizer": str(PHI3_OFFLINE),
                        "batch_size": BATCH,
                        "shard_tokens": 1_000_000,
                        "phase1": recipe,
                        "phase2": recipe,
                    },
                }
            )
            init_ray(config.ray)  # Ray's own start is not the stage's work
            cores = int(ray.cluster_resources().get("CPU", args.cpus))
            for r in range(args.repeats):
                t0 = time.perf_counter()
                rec = run_pipeline(config, force=True, log=lambda _: None)[0]
                stage_s = time.perf_counter() - t0
                assert rec["details"]["phase1"]["tokens"] == k * n_bare, (
                    "the stage and the bare encode disagree on the token count"
                )
                ours = k * mb / stage_s / cores
                print(
                    f"x{k} run {r + 1}: mix stage on {k * mb:.0f} MB ({cores} cores, both phases from one "
                    "tokenization, "
                    f"{rec['tokens_out']:,} tokens written): {stage_s:.2f} s, {k * mb / stage_s:.2f} MB/s, "
                    f"{ours:.2f} MB/s per core; "
                    f"tokenizing {rec['details']['tokenize_s']} s, selecting {rec['details']['select_s']} s, "
                    f"shuffling and writing shards {rec['details']['write_s']} s"
                )
                after, _ = bare()
                ratios.append(ours / ((before + after) / 2))
                print(
                    f"x{k} run {r + 1}: {ratios[-1]:.3f} of bare (the mean of the bare runs just before and "
                    "after)"
                )
                before = after
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        ratio = statistics.median(ratios)
        print(f"x{k}: median of {len(ratios)} runs: {ratio:.3f} of bare")
    print(f"ratio: {ratio:.3f}")


if __name__ == "__main__":
    main()
