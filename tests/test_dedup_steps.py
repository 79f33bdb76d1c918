"""Dedup at scale: the driver holds a bounded number of object references whatever the corpus size, and a
rerun in the same work directory reuses the committed steps and gives the output of an uninterrupted run."""

from __future__ import annotations

import os
import random
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.stages.dedup.config import DedupConfig
from pipeline.stages.dedup.core import dedup_dataset
from tests.test_dedup import articles, near_copy

BLOCK_ROWS = 250  # rows per input file (one read task each), as an upstream stage's parts


def short_docs(n: int, seed: int = 0) -> pa.Table:
    """`n` short documents (3 to 5 sentences of real articles), every tenth a near copy of an earlier
    one, every 25th an exact copy."""
    rng = random.Random(seed)
    sentences = [s for a in articles("Adv", 30) for s in a["text"].split(". ") if len(s.split()) > 4]
    texts = []
    for i in range(n):
        if i > 10 and i % 10 == 0:
            texts.append(near_copy(texts[rng.randrange(i)], 1, seed=i))
        elif i > 10 and i % 25 == 1:
            texts.append(texts[rng.randrange(i)])
        else:
            texts.append(". ".join(rng.sample(sentences, rng.randint(3, 5))))
    return pa.table(
        {
            "id": [f"d{i:07d}" for i in range(n)],
            "text": texts,
            "source": ["web/test"] * n,
            "url": pa.nulls(n, pa.string()),
            "meta": ["{}"] * n,
        }
    )


def write_parts(t: pa.Table, d) -> str:
    d.mkdir()
    for k in range(0, t.num_rows, BLOCK_ROWS):
        pq.write_table(t.slice(k, BLOCK_ROWS), d / f"part-{k // BLOCK_ROWS:05d}.parquet")
    return str(d)


class PeakRefs:
    """The most object references the driver's core worker holds (owned or borrowed) at any sample."""

    def __init__(self, ray):
        self.worker = ray._private.worker.global_worker.core_worker

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, len(self.worker.get_all_reference_counts()))
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def outcome(out) -> list[tuple]:
    cols = ["id", "drop_reason", "drop_detail", "dup_cluster", "dup_cluster_size"]
    return sorted(tuple(r[c] for c in cols) for r in out.select_columns(cols).take_all())


def test_driver_references_do_not_grow_with_the_corpus(ray_local, tmp_path):
    cfg = DedupConfig(partitions=2)
    peaks, dropped = {}, {}
    for n in (1000, 4000):
        inp = write_parts(short_docs(n), tmp_path / f"in{n}")
        ds = ray_local.data.read_parquet(inp)
        with PeakRefs(ray_local) as refs:
            out, details = dedup_dataset(ds, cfg, str(tmp_path / f"work{n}"))
            rows = outcome(out)
        peaks[n] = refs.peak
        dropped[n] = sum(r[1] is not None for r in rows)
        assert len(rows) == n and details["docs_with_duplicates"] > 0
    assert dropped[4000] >= 4 * 0.1 * 1000 and dropped[1000] >= 0.1 * 1000, dropped
    # 4x the documents and input blocks: with Ray Data's shuffles the driver held a reference per
    # map-output block of every shuffle (about 4x here); the steps through files hold a few per task
    assert peaks[4000] <= 1.25 * peaks[1000] + 10, peaks


def test_rerun_reuses_committed_steps_and_gives_the_same_output(ray_local, tmp_path):
    t = short_docs(1500, seed=1)
    inp = write_parts(t, tmp_path / "in")
    cfg = DedupConfig(partitions=3)
    work = tmp_path / "work"
    steps = work / "_steps"
    first, details = dedup_dataset(ray_local.data.read_parquet(inp), cfg, str(work))
    whole = outcome(first)
    assert details["steps_reused"] == [] and details["cc_rounds"] >= 2, details
    order = ["keys", "edges"] + [
        f"cc{k}-{s}" for k in range(1, details["cc_rounds"] + 1) for s in ("large", "small")
    ]
    order += ["clusters", "assign"]
    assert sorted(p.name for p in steps.glob("*.json")) == sorted(f"{s}.json" for s in order)

    # killed after the first round of components: the later records never written, a half-written
    # file of the next step left behind
    keys_files = {p: p.stat().st_mtime_ns for p in (steps / "keys").rglob("*.parquet")}
    for s in order[4:]:
        (steps / f"{s}.json").unlink()
    stray = steps / "cc2-large" / "out" / "000000.parquet"
    stray.write_bytes(b"not parquet")
    again, details2 = dedup_dataset(ray_local.data.read_parquet(inp), cfg, str(work))
    assert details2["steps_reused"] == order[:4], details2
    assert outcome(again) == whole
    assert {p: p.stat().st_mtime_ns for p in (steps / "keys").rglob("*.parquet")} == keys_files
    assert {k: v for k, v in details2.items() if k != "steps_reused"} == {
        k: v for k, v in details.items() if k != "steps_reused"
    }

    # everything committed: nothing recomputed
    third, details3 = dedup_dataset(ray_local.data.read_parquet(inp), cfg, str(work))
    assert details3["steps_reused"] == order and outcome(third) == whole

    # a record from other settings is not reused
    other, details4 = dedup_dataset(
        ray_local.data.read_parquet(inp), DedupConfig(partitions=3, seed=2), str(work)
    )
    assert details4["steps_reused"] == []
    assert os.path.exists(steps / "assign.json")
