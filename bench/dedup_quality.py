"""Dedup accuracy against exact Jaccard, ours and datatrove's MinHash pipeline on the same documents.

A. The demo corpus's web documents plus planted near-copies (boilerplate, dropped/swapped paragraphs,
   word edits) of some of them. Truth: exact Jaccard of word 5-gram sets over all pairs. Printed: the
   share of pairs merged per Jaccard bin (with the S-curve's expectation), precision of merged pairs at
   J >= 0.5 and J >= 0.7, recall at J >= 0.8.
B. OneStopEnglish (bundled): 189 articles at three reading levels plus a second copy of the intermediate
   texts; truth = connected components of pairs with exact J >= 0.7. Printed: pair precision, recall,
   F1 and the adjusted Rand index of the clusters.

    .venv/bin/python bench/dedup_quality.py [--output out/demo] [--planted 600]
Ends with `ratio: <ours F1 / datatrove F1 on B>`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.special import comb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _dedup_common as common  # noqa: E402

from pipeline.stages.dedup.config import DedupConfig  # noqa: E402
from pipeline.stages.dedup.params import detection_probability  # noqa: E402

BINS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0001]


def merged_table(name: str, labels: list, rows, cols, jac, b: int, r: int) -> None:
    merged = common.cluster_pairs(labels)
    hit = np.array([(i, j) in merged for i, j in zip(rows.tolist(), cols.tolist())], dtype=bool)
    print(f"  {name}: share of pairs merged per exact-Jaccard bin (S-curve expectation in brackets)")
    for lo, hi in zip(BINS, BINS[1:]):
        m = (jac >= lo) & (jac < hi)
        if m.any():
            expect = np.mean([detection_probability(x, b, r) for x in jac[m]])
            print(
                f"    J in [{lo:.1f}, {min(hi, 1):.1f}{']' if hi > 1 else ')'}: {hit[m].sum():5d} / "
                f"{m.sum():5d} = {hit[m].mean():.3f}  [{expect:.3f}]"
            )
    truth = {(i, j): x for i, j, x in zip(rows.tolist(), cols.tolist(), jac.tolist())}
    for t in (0.5, 0.7):
        good = sum(truth.get(p, 0) >= t for p in merged)
        print(
            f"    precision (merged pairs with J >= {t}): {good} / {len(merged)} = "
            f"{good / max(len(merged), 1):.3f}"
        )
    pos = jac >= 0.8
    print(f"    recall (pairs with J >= 0.8 merged): {hit[pos].sum()} / {pos.sum()} = {hit[pos].mean():.3f}")


def ari(a: list[int], b: list[int]) -> float:
    """Adjusted Rand index of two labelings (Hubert & Arabie), from their contingency table."""
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    table = coo_matrix((np.ones(len(a)), (ia, ib))).toarray()
    pairs = comb(table, 2).sum()
    pa_, pb = comb(table.sum(1), 2).sum(), comb(table.sum(0), 2).sum()
    expected = pa_ * pb / comb(len(a), 2)
    return float((pairs - expected) / ((pa_ + pb) / 2 - expected))


def pair_scores(name: str, labels: list, truth_labels: list[int]) -> float:
    pred = common.cluster_pairs(labels)
    true = common.cluster_pairs(truth_labels)
    tp = len(pred & true)
    p, r = tp / max(len(pred), 1), tp / max(len(true), 1)
    f1 = 2 * p * r / max(p + r, 1e-9)
    singles = [lab if lab is not None else f"single-{i}" for i, lab in enumerate(labels)]
    print(
        f"  {name}: pairs merged {len(pred)}, true {len(true)}, precision {p:.3f}, recall {r:.3f}, F1 "
        f"{f1:.3f}, "
        f"ARI {ari(singles, truth_labels):.3f}"
    )
    return f1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--output", default="out/demo", help="demo run output holding ingest/ (ingest is run if missing)"
    )
    ap.add_argument("--planted", type=int, default=600, help="near-copies planted in part A")
    args = ap.parse_args()

    import ray

    ray.init(num_cpus=2, object_store_memory=512 * 2**20, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = DedupConfig()
    b, r = cfg.bands_rows()
    print(f"setting: {cfg.describe()}")

    docs = common.plant(common.demo_docs(args.output), args.planted)
    print(f"\nA. demo web documents + {args.planted} planted near-copies: {docs.num_rows} documents")
    rows, cols, jac = common.all_pairs_jaccard(docs["text"].to_pylist())
    ours = common.run_ours(docs, cfg)
    work = common.tmpdir()
    theirs = common.run_datatrove(docs, b, r, cfg.ngram, workers=2, workdir=work)
    shutil.rmtree(work)
    merged_table("ours", ours, rows, cols, jac, b, r)
    merged_table("datatrove", theirs, rows, cols, jac, b, r)

    ose = common.onestopenglish()
    print(f"\nB. OneStopEnglish: {ose.num_rows} documents; truth = components of exact J >= 0.7")
    rows, cols, jac = common.all_pairs_jaccard(ose["text"].to_pylist())
    keep = jac >= 0.7
    n = ose.num_rows
    _, truth = connected_components(
        coo_matrix((np.ones(keep.sum()), (rows[keep], cols[keep])), shape=(n, n)), directed=False
    )
    ours = common.run_ours(ose, cfg)
    work = common.tmpdir()
    theirs = common.run_datatrove(ose, b, r, cfg.ngram, workers=2, workdir=work)
    shutil.rmtree(work)
    f1_ours = pair_scores("ours", ours, truth.tolist())
    f1_theirs = pair_scores("datatrove", theirs, truth.tolist())
    print(f"ratio: {f1_ours / max(f1_theirs, 1e-9):.3f}")


if __name__ == "__main__":
    main()
