"""The loss curve picture: training loss and held-out loss per source against tokens, phases marked."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss(metrics_path: str, out_png: str, title: str = "training loss") -> None:
    with open(metrics_path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    train = [r for r in rows if "loss" in r]
    held = [r for r in rows if "heldout" in r]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], lw=1, label="train")
    for key in sorted({k for r in held for k in r["heldout"]}):
        pts = [(r["tokens"], r["heldout"][key]) for r in held if key in r["heldout"]]
        ax.plot(*zip(*pts), "--", marker=".", lw=1, label=f"held-out {key}")
    phase_of = [r["phase"] for r in train]
    for i in range(1, len(train)):
        if phase_of[i] != phase_of[i - 1]:
            ax.axvline(train[i - 1]["tokens"], color="grey", lw=0.8, ls=":")
            ax.text(
                train[i - 1]["tokens"],
                ax.get_ylim()[1],
                f" {phase_of[i]}",
                va="top",
                fontsize=8,
                color="grey",
            )
    ax.set_xlabel("training tokens")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
