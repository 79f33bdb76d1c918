"""Extraction quality of ingest's HTML-to-text step on the demo's real web pages, against ground truth.

trafilatura's evaluation set gives, per page, strings a correct main-text extraction must contain
(`with`) and must not contain (`without`, boilerplate). We score the configured extractor (datatrove's
Trafilatura with favour_precision, as ingest runs it) and, as the baseline, trafilatura's defaults, on the
same pages in the same run.   .venv/bin/python bench/extraction_quality.py [--warc PATH --gold PATH]

Metric: trafilatura's own evaluation (its benchmark's precision/recall over these snippets): a `with`
string found is a true positive, one missing a false negative, a `without` string found a false positive;
precision = TP / (TP + FP), recall = TP / (TP + FN), F1 their harmonic mean. Also printed: the share of
boilerplate strings kept out (TN / (TN + FP), a specificity; the "F1" this bench printed before 2026-12-04
combined it with recall, shown as `F1 (specificity)` for comparison). Excluded: pages without gold.
Both sides: same pages, already decompressed in memory, one after the other in this process (one core).
"""

import argparse
import json
import re
import time
from pathlib import Path

import trafilatura

from pipeline.stages.ingest.extract import _extractor
from pipeline.stages.ingest.readers import InputFile, read_warc

ROOT = Path(__file__).resolve().parent.parent


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def score(extract, pages, gold) -> dict:
    found = wanted = leaked = unwanted = 0
    t0 = time.perf_counter()
    for url, html in pages:
        text = _norm(extract(html) or "")
        g = gold[url]
        found += sum(_norm(s) in text for s in g["with"])
        wanted += len(g["with"])
        leaked += sum(_norm(s) in text for s in g["without"])
        unwanted += len(g["without"])
    recall = found / wanted  # TP / (TP + FN)
    precision = found / (found + leaked) if found + leaked else 0.0  # TP / (TP + FP)
    excluded = 1 - leaked / unwanted  # TN / (TN + FP): a specificity, not a precision
    return {
        "recall": recall,
        "precision": precision,
        "f1": 2 * recall * precision / (recall + precision) if recall + precision else 0.0,
        "boilerplate_excluded": excluded,
        "f1_specificity": 2 * recall * excluded / (recall + excluded),
        "pages_per_s": len(pages) / (time.perf_counter() - t0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warc", default=str(ROOT / "tests/data/demo/trafilatura-eval-557.warc.gz"))
    ap.add_argument("--gold", default=str(ROOT / "tests/data/demo-extraction-gold.jsonl"))
    args = ap.parse_args()
    gold = {g["url"]: g for g in map(json.loads, open(args.gold, encoding="utf-8"))}
    f = InputFile(args.warc, Path(args.warc).name, "web/eval", "warc")
    pages = [(r["url"], r["html"]) for r in read_warc(f, 10**9, {}) if r["html"] and r["url"] in gold]
    print(f"{len(pages)} pages with ground truth")
    ours = score(_extractor(True).extract, pages, gold)
    base = score(lambda h: trafilatura.extract(h), pages, gold)
    for name, s in [
        ("ingest (datatrove Trafilatura, favour_precision)", ours),
        ("baseline: trafilatura defaults", base),
    ]:
        print(
            f"{name:<50} precision {s['precision']:.3f}  recall {s['recall']:.3f}  F1 {s['f1']:.3f}  "
            f"(boilerplate excluded {s['boilerplate_excluded']:.3f}, F1 (specificity) "
            f"{s['f1_specificity']:.3f})  {s['pages_per_s']:.1f} pages/s"
        )
    print(f"ratio: {ours['f1'] / base['f1']:.3f}")


if __name__ == "__main__":
    main()
