"""`phicurate report OUTPUT`: one self-contained HTML page with its pictures beside it (OUTPUT/report/).

Everything on the page is read from what the stages wrote: `_stage.json` records, the annotate, dedup and
synth Parquet columns, the mix manifests and the trainer's metrics. Nothing is recomputed.

Memory does not grow with the corpus: totals come from the records; the Parquet outputs are streamed a row
group at a time and only the columns a picture needs are read (never `text`); the signal histograms are drawn
from a seeded sample of at most SAMPLE_ROWS documents, the language and cluster-size counts are exact.
"""

from __future__ import annotations

import html
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipeline import storage  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.tools.ablate.report import html_section as ablation_section  # noqa: E402
from pipeline.tools.status import stage_records  # noqa: E402

BASE_COLUMNS = {"id", "text", "source", "url", "meta"}
SAMPLE_ROWS = 100_000  # documents a histogram is drawn from, whatever the corpus size
SAMPLE_SEED = 0  # the same output gives the same pictures


def _png(fig, out_dir: str, name: str) -> str:
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name))
    plt.close(fig)
    return f"report/{name}"


def _files(output: str, stage: str) -> list[str]:
    """A stage's kept Parquet parts (not `dropped/`), in a fixed order."""
    return storage.list_files(storage.join(output, stage), suffix=".parquet")


def _schema(files: list[str]) -> pa.Schema:
    fs, path = storage.resolve(files[0])
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).schema_arrow


def _batches(files: list[str], columns: list[str]):
    """The named columns of the files, one row group at a time, in file order (deterministic)."""
    for uri in files:
        fs, path = storage.resolve(uri)
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            names = set(pf.schema_arrow.names)
            if not all(c in names for c in columns):
                continue  # an empty typed part of another shape adds nothing
            for i in range(pf.num_row_groups):
                yield pf.read_row_group(i, columns=columns)


def _rows(files: list[str]) -> int:
    """Documents in the files, from their footers."""
    total = 0
    for uri in files:
        fs, path = storage.resolve(uri)
        with fs.open_input_file(path) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def sample(files: list[str], columns: list[str], n: int | None = None, seed: int = SAMPLE_SEED) -> pa.Table:
    """A seeded Bernoulli sample of about `n` rows (default SAMPLE_ROWS; all of them when there are fewer),
    never more than n held."""
    n = SAMPLE_ROWS if n is None else n
    total = _rows(files)
    p = min(1.0, n / total) if total else 1.0
    rng = np.random.default_rng(seed)
    got, held = [], 0
    for t in _batches(files, columns):
        if p < 1.0:
            t = t.filter(pa.array(rng.random(t.num_rows) < p))
        t = t.slice(0, n - held)
        got.append(t)
        held += t.num_rows
        if held >= n:
            break
    if not got:  # no row group at all (an empty stage): its typed empty columns
        return pa.schema([_schema(files).field(c) for c in columns]).empty_table()
    return pa.concat_tables(got)


def value_counts(files: list[str], column: str) -> dict:
    """Exact counts of each value of one column, streamed (for columns with few distinct values)."""
    counts: dict = {}
    for t in _batches(files, [column]):
        for vc in pc.value_counts(t[column]).to_pylist():
            counts[vc["values"]] = counts.get(vc["values"], 0) + vc["counts"]
    return counts


def _parts_txt(r: dict) -> str:
    return f"{r['parts']} ({r.get('parts_reused', 0)})" if "parts" in r else ""


def funnel(records: dict, out_dir: str) -> tuple[str, str]:
    """Documents and tokens through every stage, drop reasons stacked."""
    stages = [s for s, r in records.items() if r.get("status") == "complete" and s != "train"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.5), dpi=100, gridspec_kw={"width_ratios": [3, 2]})
    kept = [records[s]["docs_out"] for s in stages]
    ax.bar(stages, kept, color="#3b7dd8", label="kept")
    bottom = np.array(kept, dtype=float)
    reasons = sorted(
        {k for s in stages for k in records[s]["dropped"]},
        key=lambda k: -sum(records[s]["dropped"].get(k, 0) for s in stages),
    )
    cmap = plt.get_cmap("tab20")
    for i, reason in enumerate(reasons[:19]):
        vals = np.array([records[s]["dropped"].get(reason, 0) for s in stages], dtype=float)
        ax.bar(stages, vals, bottom=bottom, color=cmap(i % 20), label=reason)
        bottom += vals
    ax.set_title("documents in, by outcome")
    ax.legend(fontsize=6, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax2.bar(stages, [records[s]["tokens_out"] for s in stages], color="#2a9d5c")
    ax2.set_title("tokens out (words; tokenizer tokens for mix)")
    for a in (ax, ax2):
        a.tick_params(axis="x", rotation=30)
    png = _png(fig, out_dir, "funnel.png")
    rows = []
    for s, r in records.items():
        if r.get("status") != "complete":
            rows.append(f"<tr><td>{s}</td><td colspan=7>incomplete</td></tr>")
            continue
        reasons_txt = ", ".join(
            f"{html.escape(k)} {v}" for k, v in sorted(r["dropped"].items(), key=lambda kv: -kv[1])
        )
        rows.append(
            f"<tr data-stage='{s}'><td>{s}</td><td class=n data-key=docs_in>{r['docs_in']}</td>"
            f"<td class=n data-key=docs_out>{r['docs_out']}</td><td class=n "
            f"data-key=dropped>{sum(r['dropped'].values())}</td>"
            f"<td class=n data-key=tokens_out>{r['tokens_out']}</td><td "
            f"class=n>{r['wall_s']}</td><td class=n>{_parts_txt(r)}</td><td>{reasons_txt}</td></tr>"
        )
    table = (
        "<table id=funnel><tr><th>stage</th><th>docs in</th><th>kept</th><th>dropped</th><th>tokens out</th>"
        "<th>wall s</th><th>parts (reused)</th><th>drop reasons</th></tr>" + "".join(rows) + "</table>"
    )
    return png, table


def signals(output: str, records: dict, out_dir: str) -> tuple[list[tuple[str, str]], str]:
    """A histogram per numeric signal of annotate's output (from a seeded sample of its documents), with
    select's threshold marked where a rule uses it."""
    files = _files(output, "annotate")
    if not files:
        return [], ""
    thresholds: dict[str, list[float]] = {}
    sel = records.get("select", {}).get("details", {}).get("select")
    if sel:
        from pipeline.stages.select import rules
        from pipeline.stages.select.config import SelectConfig

        for r in rules.rules(SelectConfig.model_validate(sel)):
            if r.op in ("<", ">") and isinstance(r.threshold, (int, float)):
                thresholds.setdefault(r.column, []).append(float(r.threshold))
    cols = [
        f.name
        for f in _schema(files)
        if f.name not in BASE_COLUMNS and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
    ]
    t = sample(files, cols)
    total = _rows(files)
    of = "" if t.num_rows == total else f", sample of {t.num_rows} of {total}"
    caption = (
        f"<p id=signals-sample>histograms of {t.num_rows} of {total} annotated documents"
        f"{' (a seeded sample)' if of else ''}</p>"
    )
    out = []
    for col in cols:
        v = t[col].drop_null().to_numpy(zero_copy_only=False).astype(float)
        if not len(v):
            continue
        fig, ax = plt.subplots(figsize=(4.2, 2.8), dpi=90)
        ax.hist(v, bins=40, color="#6c8ebf")
        for th in thresholds.get(col, []):
            ax.axvline(th, color="#d62728", lw=1.5)
        ax.set_title(col + (" (red: threshold)" if col in thresholds else "") + of, fontsize=9)
        out.append((col, _png(fig, out_dir, f"signal-{col}.png")))
    return out, caption


def languages(output: str, out_dir: str) -> str | None:
    files = _files(output, "annotate")
    if not files or "lang" not in _schema(files).names:
        return None
    counts = sorted(value_counts(files, "lang").items(), key=lambda x: -x[1])[:20]
    fig, ax = plt.subplots(figsize=(7, 3), dpi=100)
    ax.bar([str(k) for k, _ in counts], [v for _, v in counts], color="#8c6bb1")
    ax.set_title("language mix of ingested documents (top 20)")
    return _png(fig, out_dir, "languages.png")


def dedup_clusters(output: str, out_dir: str) -> str | None:
    files = _files(output, "dedup")
    if not files or "dup_cluster_size" not in _schema(files).names:
        return None
    counts = sorted(value_counts(files, "dup_cluster_size").items())
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    ax.bar([str(v) for v, _ in counts], [c for _, c in counts], color="#e07b39")
    ax.set_yscale("log")
    ax.set_xlabel("cluster size (1 = no duplicate)")
    ax.set_title("kept documents by duplicate-cluster size")
    return _png(fig, out_dir, "dedup-clusters.png")


def synth_section(records: dict, out_dir: str) -> tuple[str | None, str]:
    rec = records.get("synth")
    if not rec or rec.get("status") != "complete":
        return None, ""
    div = rec.get("details", {}).get("diversity", {})
    by_style, by_aud = div.get("kept_by_style", {}), div.get("kept_by_audience", {})
    png = None
    if by_style or by_aud:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3), dpi=100)
        a1.bar(list(by_style), list(by_style.values()), color="#2a9d8f")
        a1.set_title("kept outputs by style")
        a2.bar(list(by_aud), list(by_aud.values()), color="#e9c46a")
        a2.set_title("kept outputs by audience")
        for a in (a1, a2):
            a.tick_params(axis="x", rotation=20, labelsize=7)
        png = _png(fig, out_dir, "synth.png")
    scalars = {k: v for k, v in div.items() if not isinstance(v, dict)}
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td class=n>{v}</td></tr>" for k, v in scalars.items())
    qc = "".join(
        f"<tr><td>dropped: {html.escape(k)}</td><td class=n>{v}</td></tr>" for k, v in rec["dropped"].items()
    )
    return png, f"<table id=synth><tr><th>diversity and quality control</th><th></th></tr>{rows}{qc}</table>"


def mix_section(output: str, out_dir: str) -> tuple[str | None, str]:
    phases = {}
    for phase in ("phase1", "phase2"):
        m = storage.read_json(storage.join(output, "mix", phase, "manifest.json"))
        if m:
            phases[phase] = m
    if not phases:
        return None, ""
    sources = sorted({s for m in phases.values() for s in m["sources"]})
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    bottom = np.zeros(len(phases))
    for i, s in enumerate(sources):
        vals = np.array([m["sources"].get(s, {}).get("tokens", 0) for m in phases.values()], dtype=float)
        ax.bar(list(phases), vals, bottom=bottom, label=s, color=plt.get_cmap("tab10")(i % 10))
        bottom += vals
    ax.set_title("tokens per phase by source")
    ax.legend(fontsize=7)
    png = _png(fig, out_dir, "mix.png")
    rows = "".join(
        f"<tr data-phase='{p}' data-source='{html.escape(s)}'><td>{p}</td><td>{html.escape(s)}</td>"
        f"<td class=n>{v['tokens']}</td><td class=n>{v['docs']}</td><td class=n>{v['weight']:.3f}</td>"
        f"<td class=n>{v['epochs']}</td></tr>"
        for p, m in phases.items()
        for s, v in m["sources"].items()
    )
    return png, (
        "<table id=mix><tr><th>phase</th><th>source</th><th>tokens</th><th>docs</th><th>weight</th>"
        f"<th>epochs</th></tr>{rows}</table>"
    )


def loss_curve(output: str, out_dir: str) -> str | None:
    metrics = storage.join(output, "train", "metrics.jsonl")
    if not storage.exists(metrics):
        return None
    from train_handoff.curve import plot_loss

    plot_loss(metrics, os.path.join(out_dir, "loss.png"))
    return "report/loss.png"


def contamination_table(output: str) -> str:
    """Per benchmark: items found in the corpus, the dropped documents by source, examples
    (decontaminate/contamination.json)."""
    rep = storage.read_json(storage.join(output, "decontaminate", "contamination.json"))
    if not rep:
        return ""
    e = html.escape
    rows = ""
    for name, b in rep["benchmarks"].items():
        sources = ", ".join(f"{e(s)}: {n}" for s, n in b["by_source"].items()) or "-"
        examples = "<br>".join(f"{e(str(x['doc']))}: {e(x['match'])}" for x in b["examples"]) or "-"
        rows += (
            f"<tr><td>{e(name)}</td><td class=n>{b['items_found']} of {b['items']}</td>"
            f"<td class=n>{b['docs_dropped']}</td><td>{sources}</td><td>{examples}</td></tr>"
        )
    cols = ("benchmark", "items found", "documents dropped", "by source", "examples")
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"
    return f"<table id=contamination>{head}{rows}</table>"


def _img(src: str | None, alt: str) -> str:
    return f"<img src='{src}' alt='{html.escape(alt)}'>" if src else ""


def write_report(output: str) -> str:
    """Write OUTPUT/report.html and OUTPUT/report/*.png; return the page's path."""
    if "://" in output:
        raise UserError(
            f"{output}: report writes next to a local output directory; copy the run's output locally first"
        )
    records = stage_records(output)
    out_dir = os.path.join(output, "report")
    os.makedirs(out_dir, exist_ok=True)
    funnel_png, funnel_table = funnel(records, out_dir)
    sig, sig_caption = signals(output, records, out_dir)
    synth_png, synth_table = synth_section(records, out_dir)
    mix_png, mix_table = mix_section(output, out_dir)
    sections = [
        ("Funnel: documents and tokens through the stages", _img(funnel_png, "funnel") + funnel_table),
        (
            "Signals (annotate), select thresholds in red",
            ("".join(_img(p, c) for c, p in sig) + sig_caption) or "<p>annotate has not run</p>",
        ),
        ("Language mix", _img(languages(output, out_dir), "languages") or "<p>no language column</p>"),
        (
            "Deduplication",
            _img(dedup_clusters(output, out_dir), "dedup clusters") or "<p>dedup has not run</p>",
        ),
        ("Benchmark contamination", contamination_table(output) or "<p>decontaminate has not run</p>"),
        ("Synthetic textbooks", (_img(synth_png, "synth") + synth_table) or "<p>synth has not run</p>"),
        ("Phase mixes", (_img(mix_png, "mix") + mix_table) or "<p>mix has not run</p>"),
        ("Training", _img(loss_curve(output, out_dir), "loss curve") or "<p>train has not run</p>"),
        (
            "Ablation: arms side by side",
            ablation_section(os.path.join(output, "ablate"), out_dir)
            or "<p>no ablation (phicurate ablate writes OUTPUT/ablate/)</p>",
        ),
    ]
    body = "".join(f"<section><h2>{html.escape(t)}</h2>{c}</section>" for t, c in sections)
    title = f"phicurate report: {html.escape(output)}"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}} img{{max-width:100%;margin:4px}}
table{{border-collapse:collapse;margin:1em 0}} td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}
td.n{{text-align:right;font-variant-numeric:tabular-nums}} section img{{vertical-align:top}}</style></head>
<body><h1>phicurate report</h1><p>{html.escape(os.path.abspath(output))}</p>{body}</body></html>"""
    path = os.path.join(output, "report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path
