"""Shared by bench/dedup_quality.py and bench/dedup_speed.py: the demo documents, planted near-copies,
exact all-pairs Jaccard (the ground truth), and runs of our dedup and of datatrove's MinHash pipeline."""

from __future__ import annotations

import glob
import io
import json
import os
import random
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
import zstandard
from scipy.sparse import csr_matrix, triu

ROOT = Path(__file__).resolve().parent.parent
OSE = ROOT / "tests" / "data" / "demo" / "onestopenglish.jsonl.zst"
BOILERPLATE = [
    "Home | News | Contact | Privacy policy",
    "Share this page on social media",
    "Cookies help us deliver our services. By using our services, you agree to our use of cookies.",
    "All rights reserved. Terms of use.",
]


def demo_docs(output: str) -> pa.Table:
    """(id, text) of the demo corpus's ingested web documents; runs ingest into `output` if needed."""
    from pipeline.config import load_config
    from pipeline.runner import read_record, run_pipeline

    if read_record(output, "ingest") is None:
        print(f"no complete ingest in {output}: running it (phicurate run configs/demo.yaml --stages ingest)")
        run_pipeline(load_config(ROOT / "configs" / "demo.yaml", output=output), stages=["ingest"])
    t = pq.read_table(
        sorted(glob.glob(os.path.join(output, "ingest", "*.parquet"))), columns=["id", "text", "source"]
    )
    return t.filter(pa.compute.not_equal(t["source"], "web/onestopenglish")).select(["id", "text"])


def onestopenglish() -> pa.Table:
    """The 756 OneStopEnglish files (ids are their paths), read from the bundled JSONL."""
    with zstandard.ZstdDecompressor().stream_reader(OSE.open("rb")) as f:
        rows = [json.loads(line) for line in io.TextIOWrapper(f, encoding="utf-8")]
    return pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows]})


def near_copy(text: str, rng: random.Random) -> str:
    """A copy the way crawls repeat pages: some of boilerplate added, a paragraph dropped, paragraphs
    swapped, words edited (rates drawn so that the Jaccard of copies spreads over 0.3 .. 1)."""
    paras = [p for p in text.split("\n") if p.strip()]
    if len(paras) > 3 and rng.random() < 0.3:
        paras.pop(rng.randrange(len(paras)))
    if len(paras) > 3 and rng.random() < 0.3:
        i = rng.randrange(len(paras) - 1)
        paras[i], paras[i + 1] = paras[i + 1], paras[i]
    if rng.random() < 0.5:
        paras = [rng.choice(BOILERPLATE)] + paras + [rng.choice(BOILERPLATE)]
    rate = rng.choice([0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12])
    out = []
    for p in paras:
        words = p.split(" ")
        out.append(" ".join(f"x{rng.randrange(10**6)}" if rng.random() < rate else w for w in words))
    return "\n".join(out)


def plant(docs: pa.Table, n: int, seed: int = 0, min_words: int = 50) -> pa.Table:
    """`docs` plus near-copies of `n` randomly chosen documents with at least `min_words` words."""
    rng = random.Random(seed)
    texts = docs["text"].to_pylist()
    eligible = [i for i, t in enumerate(texts) if len(t.split()) >= min_words]
    chosen = rng.sample(eligible, min(n, len(eligible)))
    ids = docs["id"].to_pylist()
    new_ids = [f"{ids[i]}-copy" for i in chosen]
    new_texts = [near_copy(texts[i], rng) for i in chosen]
    return pa.table({"id": ids + new_ids, "text": texts + new_texts})


def all_pairs_jaccard(
    texts: list[str], ngram: int = 5, min_j: float = 0.3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact Jaccard of word n-gram sets (same shingles as the stage) for every pair of documents that
    share a shingle, through a sparse document x shingle product; pairs (i < j) with J >= min_j."""
    from pipeline.stages.dedup.minhash import shingles

    rows, cols, vocab = [], [], {}
    for i, t in enumerate(texts):
        for s in shingles(t, ngram):
            cols.append(vocab.setdefault(xxhash.xxh64_intdigest(s), len(vocab)))
            rows.append(i)
    m = csr_matrix((np.ones(len(rows), np.int32), (rows, cols)), shape=(len(texts), len(vocab)))
    sizes = np.asarray(m.sum(axis=1)).ravel()
    inter = triu(m @ m.T, k=1).tocoo()
    j = inter.data / (sizes[inter.row] + sizes[inter.col] - inter.data)
    keep = j >= min_j
    return inter.row[keep], inter.col[keep], j[keep]


def cluster_pairs(labels: list) -> set[tuple[int, int]]:
    """Pairs (i < j) of documents with the same non-None label."""
    groups: dict = {}
    for i, lab in enumerate(labels):
        if lab is not None:
            groups.setdefault(lab, []).append(i)
    return {(a, b) for g in groups.values() for k, a in enumerate(g) for b in g[k + 1 :]}


def write_input(docs: pa.Table, workdir: str, parts: int) -> str:
    """`docs` as `parts` Parquet files in workdir/input: the one input both sides read in dedup_speed."""
    inp = os.path.join(workdir, "input")
    os.makedirs(inp)
    per = -(-docs.num_rows // parts)
    for k in range(parts):
        pq.write_table(docs.slice(k * per, per), os.path.join(inp, f"part-{k}.parquet"))
    return inp


def _stage_columns(t: pa.Table) -> pa.Table:
    """The columns the dedup stage expects from ingest, for documents that have only id and text."""
    n = t.num_rows
    t = t.append_column("source", pa.array(["bench"] * n)).append_column("url", pa.nulls(n, pa.string()))
    return t.append_column("meta", pa.array(["{}"] * n))


def run_ours(docs: pa.Table, cfg, write_to: str | None = None, inp: str | None = None) -> list:
    """Our dedup on the running Ray; cluster label per document (None if alone), in input order. `inp`: a
    write_input directory to read (as the stage reads its input), else `docs` from memory."""
    import ray

    from pipeline.stages.dedup.core import dedup_dataset

    if inp:
        ds = ray.data.read_parquet(inp).map_batches(_stage_columns, batch_format="pyarrow")
    else:
        ds = ray.data.from_arrow(_stage_columns(docs)).repartition(max(2, docs.num_rows // 500))
    with tempfile.TemporaryDirectory(prefix="phicurate-dedup-steps-") as work:  # the steps' files
        out, _ = dedup_dataset(ds, cfg, work)
        if write_to:
            out.write_parquet(write_to)
        res = out.select_columns(["id", "dup_cluster", "dup_cluster_size"]).to_pandas()
    lab = {
        i: (c if s > 1 else None) for i, c, s in zip(res["id"], res["dup_cluster"], res["dup_cluster_size"])
    }
    return [lab[i] for i in docs["id"].to_pylist()]


def run_datatrove(
    docs: pa.Table, bands: int, rows: int, ngram: int, workers: int, workdir: str, inp: str | None = None
) -> list:
    """datatrove's four MinHash steps (signatures, buckets, cluster, filter) with LocalPipelineExecutor on
    the same documents; cluster label per document (None if alone), in input order. `inp`: a write_input
    directory to read, else `docs` are written as its input Parquet first (in workdir)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.utils.logging import logger

    logger.remove()  # its per-step stats tables would bury the figures
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter

    inp = inp or write_input(docs, workdir, workers)
    cfg = MinhashConfig(n_grams=ngram, num_buckets=bands, hashes_per_bucket=rows)
    w = lambda d: os.path.join(workdir, d)  # noqa: E731
    reader = lambda: ParquetReader(inp, text_key="text", id_key="id")  # noqa: E731
    steps = [
        ([reader(), MinhashDedupSignature(w("sigs"), config=cfg)], workers),
        ([MinhashDedupBuckets(w("sigs"), w("buckets"), config=cfg)], bands),
        ([MinhashDedupCluster(w("buckets"), w("remove"), config=cfg, save_cluster_id=True)], 1),
        (
            [
                reader(),
                MinhashDedupFilter(
                    w("remove"), exclusion_writer=ParquetWriter(w("removed")), load_cluster_ids=True
                ),
                ParquetWriter(w("kept")),
            ],
            workers,
        ),
    ]
    for pipeline, tasks in steps:
        LocalPipelineExecutor(
            pipeline,
            tasks=tasks,
            workers=min(workers, tasks),
            logging_dir=w(f"logs/{len(os.listdir(workdir))}"),
        ).run()
    lab = {}
    for path in glob.glob(w("kept/*.parquet")) + glob.glob(w("removed/*.parquet")):
        for r in pq.read_table(path, columns=["id", "metadata"]).to_pylist():
            c = (r["metadata"] or {}).get("minhash_cluster_id", -1)  # absent when no document is in a cluster
            lab[r["id"]] = None if c == -1 else c
    return [lab[i] for i in docs["id"].to_pylist()]


class PeakRSS:
    """Peak resident memory of this process and all its descendants (Ray's workers and daemons, datatrove's
    worker processes), sampled every 50 ms while in the `with` block."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def tmpdir() -> str:
    return tempfile.mkdtemp(prefix="phicurate-dedup-bench-")
