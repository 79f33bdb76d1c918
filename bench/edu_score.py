"""Educational-value classifier: training time, and documents per second scored on one core.

    .venv/bin/python bench/edu_score.py [--labels FILE] [--repeat N]

Input: the bundled labels (tests/data/labels/edu-reference.jsonl.zst: 756 real documents of the demo corpus).
Trains the demo's model (`classifier train --threshold 1`, quantized) into a temporary directory, then
scores every document with `EduScorer.score` in batches of 64 (one fastText call per batch) against the
baseline of one fastText call per document, the way datatrove's FastTextClassifierFilter calls
`model.predict(text)` (its own call fails with fasttext 0.9.3 on NumPy 2, which this bench reports; the
baseline passes a one-item list instead). Same model, same normalized texts, same process, one thread,
both warmed by one call; the two sides alternate pass by pass (so machine load falls on both alike) and
the median pass is reported. Excluded from the timing: training, model loading, reading the labels.
Ends with `ratio: batched / per-document`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from classifiers.labels import read_labels  # noqa: E402
from classifiers.score import EduScorer, one_line  # noqa: E402
from classifiers.train import TrainParams, train  # noqa: E402

BATCH = 64


def datatrove_filter_works(model_path: str, text: str) -> str:
    from datatrove.data import Document
    from datatrove.pipeline.filters import FastTextClassifierFilter

    f = FastTextClassifierFilter(model_path, keep_labels=[("pos", 0.5)])
    try:
        f.filter(Document(text=text, id="0"))
        return "works"
    except Exception as e:  # reported, not hidden
        return f"fails: {type(e).__name__}: {str(e).splitlines()[0]}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels", default="tests/data/labels/edu-reference.jsonl.zst")
    ap.add_argument(
        "--repeat", type=int, default=5, help="passes over the documents per side (median is kept)"
    )
    args = ap.parse_args()

    texts = read_labels([args.labels]).texts
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        m = train([args.labels], tmp, TrainParams(threshold=1))
        print(
            f"train: {m['train_counts']['docs']} docs, {time.perf_counter() - t0:.1f} s wall "
            f"(fastText + quantization {m['train_s']} s), model {m['model_bytes'] / 1e6:.1f} MB, "
            f"validation ROC-AUC {m['valid']['roc_auc']}"
        )
        scorer = EduScorer(m["model"])
        print(
            "datatrove FastTextClassifierFilter on this model: "
            f"{datatrove_filter_works(m['model'], texts[0])}"
        )
        scorer.score(texts[:BATCH])  # warm up

        def ours() -> list[float]:
            out = []
            for i in range(0, len(texts), BATCH):
                out += scorer.score(texts[i : i + BATCH])
            return out

        def per_doc() -> list[float]:
            out = []
            for t in texts:
                labels, probs = scorer.model.predict([one_line(t)], k=2)
                p = dict(zip(labels[0], probs[0]))
                out.append(float(p["__label__pos"] / (p["__label__pos"] + p["__label__neg"])))
            return out

        sides = {"batched (EduScorer)": ours, "per document": per_doc}
        times: dict[str, list[float]] = {name: [] for name in sides}
        scores = {}
        for _ in range(args.repeat):
            for name, fn in sides.items():  # interleaved: load on the machine affects both alike
                t0 = time.perf_counter()
                scores[name] = fn()
                times[name].append(time.perf_counter() - t0)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        for name, s in med.items():
            runs = ", ".join(f"{t:.3f}" for t in times[name])
            print(
                f"{name:22} {len(texts) / s:9.0f} docs/s  {mb / s:6.1f} MB/s  ({len(texts)} docs, "
                f"{mb:.1f} MB; median of {args.repeat} interleaved passes: {runs} s)"
            )
        a, b = scores["batched (EduScorer)"], scores["per document"]
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6, "both sides must give the same scores"
        print(f"ratio: {med['per document'] / med['batched (EduScorer)']:.3f}")


if __name__ == "__main__":
    main()
