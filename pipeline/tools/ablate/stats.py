"""Statistics over seeds, the comparison of arms, and the ablation's table and plot.

Per arm and held-out set: the mean over seeds, the sample standard deviation and a 95% t interval of the
mean. Two arms differ on a set only where the difference of their means exceeds two standard deviations of
that difference (sqrt(s_a^2 / n_a + s_b^2 / n_b)); with one seed no difference is called out at all.
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats as sps  # noqa: E402


def metric_names(runs: list[dict]) -> list[str]:
    """Loss metrics first (lower is better), then accuracies (higher is better), in the sets' order."""
    names = list(runs[0]["eval"])
    return [n for n in names if not n.endswith("_acc")] + [n for n in names if n.endswith("_acc")]


def value(ev: dict) -> float:
    return ev["accuracy"] if "accuracy" in ev else ev["loss"]


def summarize(values: list[float]) -> dict:
    a = np.asarray(values, float)
    n = len(a)
    sd = float(a.std(ddof=1)) if n > 1 else 0.0
    half = float(sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n)) if n > 1 else float("nan")
    return {
        "n": n,
        "mean": float(a.mean()),
        "sd": sd,
        "ci95": [float(a.mean()) - half, float(a.mean()) + half],
    }


def compare(runs: list[dict], arms: list[str]) -> dict:
    """{"per_arm": {arm: {metric: summary + values}}, "differences": [...]} from the per-seed results."""
    metrics = metric_names(runs)
    per_arm: dict[str, dict] = {}
    for arm in arms:
        mine = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"])
        per_arm[arm] = {
            m: {
                **summarize([value(r["eval"][m]) for r in mine]),
                "values": [value(r["eval"][m]) for r in mine],
            }
            for m in metrics
        }
    diffs = []
    for i, a in enumerate(arms):
        for b in arms[i + 1 :]:
            for m in metrics:
                sa, sb = per_arm[a][m], per_arm[b][m]
                d = sa["mean"] - sb["mean"]
                sd = math.sqrt(sa["sd"] ** 2 / sa["n"] + sb["sd"] ** 2 / sb["n"])
                enough = sa["n"] > 1 and sb["n"] > 1
                better = (d > 0) if m.endswith("_acc") else (d < 0)
                diffs.append(
                    {
                        "a": a,
                        "b": b,
                        "metric": m,
                        "diff": d,
                        "sd": sd,
                        "significant": bool(enough and abs(d) > 2 * sd),
                        "better": a if better else b,
                    }
                )
    return {"metrics": metrics, "per_arm": per_arm, "differences": diffs}


def table(result: dict) -> str:
    """A Markdown table: arms as rows, each metric as mean ± sd (n seeds), then the called-out differences."""
    metrics, per_arm = result["metrics"], result["per_arm"]
    head = ["arm"] + [m.replace("_acc", " acc") + ("" if m.endswith("_acc") else " loss") for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, s in per_arm.items():
        cells = [f"{s[m]['mean']:.4f} ± {s[m]['sd']:.4f}" for m in metrics]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines.append("")
    n = min(s[m]["n"] for s in per_arm.values() for m in metrics)
    chance = ", ".join(f"{m} {c:.2f}" for m, c in result.get("chance", {}).items())
    lines.append(
        f"mean ± sample sd over {n} seed(s); loss in nats per token (lower is better)"
        + (f", accuracy by answer log-likelihood (higher is better; chance: {chance})" if chance else "")
        + ". A difference is called out only where it exceeds 2 sd of the difference."
    )
    lines.append("")
    called = [d for d in result["differences"] if d["significant"]]
    if not called:
        lines.append("No difference between arms exceeds 2 sd of the difference.")
    for d in called:
        lines.append(
            f"- {d['metric']}: {d['better']} is better ({d['a']} - {d['b']} = {d['diff']:+.4f}, "
            f"2 sd = {2 * d['sd']:.4f})"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str, title: str) -> None:
    """One panel per metric: each arm's mean with ± sd bars and its seeds as dots."""
    metrics, per_arm = result["metrics"], result["per_arm"]
    arms = list(per_arm)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        means = [per_arm[a][m]["mean"] for a in arms]
        sds = [per_arm[a][m]["sd"] for a in arms]
        ax.bar(range(len(arms)), means, yerr=sds, capsize=4, color="#9ecae1", edgecolor="#3182bd")
        for k, a in enumerate(arms):
            vals = per_arm[a][m]["values"]
            ax.plot(np.full(len(vals), k) + np.linspace(-0.15, 0.15, len(vals)), vals, "k.", ms=5)
        if m in result.get("chance", {}):
            ax.axhline(result["chance"][m], color="#e6550d", ls="--", lw=1, label="chance")
            ax.legend(fontsize=7)
        marks = [result["chance"][m]] if m in result.get("chance", {}) else []  # chance stays in view
        lo = min([min(per_arm[a][m]["values"]) for a in arms] + marks)
        hi = max([max(per_arm[a][m]["values"]) for a in arms] + marks)
        pad = (hi - lo) * 0.5 + 1e-3
        ax.set_ylim(max(0.0, lo - pad), hi + pad)
        ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right", fontsize=8)
        ax.set_title(
            m.replace("_acc", " accuracy") if m.endswith("_acc") else f"{m} loss (nats/token)", fontsize=9
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
