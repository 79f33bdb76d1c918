"""The ablation's part of `phicurate report OUTPUT`: its table and plot, read from OUTPUT/ablate/.

Kept here so that the report only has to call `html_section` (nothing is recomputed: ablation.json and
ablation.png are what `phicurate ablate` wrote).
"""

from __future__ import annotations

import html
import json
import os
import shutil


def html_section(abl_dir: str, report_dir: str, img_prefix: str = "report/") -> str | None:
    """An HTML fragment (heading, arms side by side, called-out differences, plot), or None without an
    ablation in `abl_dir`. The plot is copied into `report_dir`."""
    path = os.path.join(abl_dir, "ablation.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        out = json.load(f)
    metrics = out["metrics"]
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    rows = []
    for arm, s in out["per_arm"].items():
        cells = "".join(f"<td>{s[m]['mean']:.4f} ± {s[m]['sd']:.4f}</td>" for m in metrics)
        rows.append(f"<tr><td>{html.escape(arm)}</td>{cells}</tr>")
    called = [d for d in out["differences"] if d["significant"]]
    notes = "".join(
        f"<li>{html.escape(d['metric'])}: {html.escape(d['better'])} better "
        f"({d['a']} − {d['b']} = {d['diff']:+.4f}, 2 sd = {2 * d['sd']:.4f})</li>"
        for d in called
    )
    img = ""
    png = os.path.join(abl_dir, "ablation.png")
    if os.path.isfile(png):
        os.makedirs(report_dir, exist_ok=True)
        shutil.copyfile(png, os.path.join(report_dir, "ablation.png"))
        img = f'<img src="{img_prefix}ablation.png" alt="ablation">'
    chance = ", ".join(f"{m} {c:.2f}" for m, c in out.get("chance", {}).items())
    return (
        f"<h2>Ablation</h2><p>{html.escape(out['model'])} model, {out['tokens_per_arm']:,} tokens and "
        f"{out['steps']} steps per arm, {out['seeds']} seeds; loss in nats per token on the held-out sets "
        f"(lower is better){'; accuracy chance ' + chance if chance else ''}. Mean ± sd over seeds.</p>"
        f"<table><tr><th>arm</th>{head}</tr>{''.join(rows)}</table>"
        + (f"<ul>{notes}</ul>" if notes else "<p>No difference between arms exceeds 2 sd.</p>")
        + img
    )
