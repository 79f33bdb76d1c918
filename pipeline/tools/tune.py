"""`phicurate tune OUTPUT --signal NAME`: what a threshold on one signal keeps, without recomputing anything.

Reads only the signal columns of annotate's Parquet output, evaluates the other active select rules once,
then sweeps thresholds over the sorted signal (a binary search per threshold), so a million documents take
seconds. The counts are those `select` would produce with that threshold (tests/test_tune.py checks it).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline import storage
from pipeline.errors import UserError
from pipeline.stages.select import rules

WORDS = "n_words"  # whitespace words per document, the runner's token count


@dataclass
class Sweep:
    signal: str
    keep_above: bool  # documents at or above the threshold pass (False: at or below)
    current: float | None  # the configured threshold, if the config has a rule on this signal
    docs: int  # all annotated documents
    words: int
    others_docs: int  # documents that pass every other active rule
    others_words: int
    rows: list[tuple[float, int, int]]  # (threshold, docs kept, words kept), cumulative with the other rules


def select_config(output: str, config_path: str | None):
    """The select rules to combine with: from --config, else the ones the last `select` run used."""
    from pipeline.stages.select.config import SelectConfig

    if config_path:
        from pipeline.config import load_config

        cfg = load_config(config_path).select
        if cfg is None:
            raise UserError(
                f"{config_path}: no 'select' section; tune combines a threshold with select's other rules"
            )
        return cfg
    rec = storage.read_json(storage.join(output, "select", "_stage.json")) or {}
    if "select" not in rec.get("details", {}):
        raise UserError(f"{output}: no completed 'select' stage to take the rules from; pass --config CONFIG")
    return SelectConfig.model_validate(rec["details"]["select"])


def pick_rule(
    rule_list: list[rules.Rule], signal: str, keep: str | None
) -> tuple[str, rules.Rule | None, bool]:
    """(column, rule being tuned or None, keep_above). `signal` is a column or a rule's drop reason."""
    by_reason = [r for r in rule_list if r.reason == signal and r.keeps_above is not None]
    on_column = by_reason or [r for r in rule_list if r.column == signal and r.keeps_above is not None]
    if len(on_column) > 1:
        names = ", ".join(r.reason for r in on_column)
        raise UserError(
            f"--signal {signal}: the config has {len(on_column)} rules on it ({names}); name one of them"
        )
    if on_column:
        rule = on_column[0]
        if keep is not None and (keep == "above") != rule.keeps_above:
            raise UserError(
                f"--keep {keep}: rule {rule.reason} keeps documents "
                f"{'above' if rule.keeps_above else 'below'}"
            )
        return rule.column, rule, rule.keeps_above
    return signal, None, keep != "below"


def annotate_files(output: str) -> list[str]:
    files = storage.list_files(storage.join(output, "annotate"), suffix=".parquet")
    if not files:
        raise UserError(f"{output}: no annotate output (run the 'annotate' stage first)")
    return files


def read_signals(output: str, columns: list[str]) -> pa.Table:
    """Only the named columns of annotate's output, plus the row position for reading samples back."""
    files = annotate_files(output)
    fs, _ = storage.resolve(files[0])
    ds = pads.dataset([storage.resolve(f)[1] for f in files], format="parquet", filesystem=fs)
    missing = [c for c in columns if c not in ds.schema.names]
    if missing:
        hint = " (edu_score needs annotate.edu_model)" if "edu_score" in missing else ""
        raise UserError(
            f"{output}/annotate has no column(s) {missing}{hint}; numeric signals: "
            f"{numeric_columns(ds.schema)}"
        )
    return ds.to_table(columns=columns)


def numeric_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]


def sweep(
    table: pa.Table,
    signal: str,
    rule: rules.Rule | None,
    keep_above: bool,
    others: list[rules.Rule],
    at: list[float] | None,
    steps: int = 20,
) -> tuple[Sweep, np.ndarray]:
    """Docs and words kept for each threshold; also returns the mask of documents passing the other rules."""
    if not (pa.types.is_integer(table[signal].type) or pa.types.is_floating(table[signal].type)):
        raise UserError(f"--signal {signal}: not a numeric column ({table[signal].type})")
    words = table[WORDS].to_numpy(zero_copy_only=False).astype(np.int64)
    passing = np.ones(len(table), dtype=bool)
    for r in others:
        passing &= ~r.fails(table).to_numpy(zero_copy_only=False)
    values = pc.cast(table[signal], pa.float64()).to_numpy(
        zero_copy_only=False
    )  # nulls become NaN: never fail, as in select
    v, w = values[passing], words[passing]
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    finite = ~np.isnan(v)
    v_sorted, cum = v[finite], np.concatenate([[0], np.cumsum(w[finite])])
    current = rule.threshold if rule is not None else None
    if at:
        thresholds = sorted(at)
    else:  # the signal's quantiles among documents passing the other rules, and the configured threshold
        grid = set(np.quantile(v_sorted, np.linspace(0, 1, steps + 1)).tolist()) if len(v_sorted) else set()
        thresholds = sorted(grid | ({current} if current is not None else set()))
    rows = []
    for t in thresholds:
        if keep_above:  # a document fails when value < t
            failed_n = int(np.searchsorted(v_sorted, t, side="left"))
            failed_w = int(cum[failed_n])
        else:  # fails when value > t
            first = int(np.searchsorted(v_sorted, t, side="right"))
            failed_n, failed_w = len(v_sorted) - first, int(cum[-1] - cum[first])
        rows.append((float(t), len(v) - failed_n, int(w.sum()) - failed_w))
    s = Sweep(signal, keep_above, current, len(table), int(words.sum()), len(v), int(w.sum()), rows)
    return s, passing


def print_sweep(s: Sweep, out=None) -> None:
    out = out or sys.stdout
    side = ">=" if s.keep_above else "<="
    pct = lambda a, b: f"{100 * a / b:6.2f}%" if b else "     -"  # noqa: E731
    print(
        f"signal {s.signal}: documents kept when {s.signal} {side} threshold, together with the other active "
        "select rules",
        file=out,
    )
    print(
        f"all annotated: {s.docs} docs, {s.words} tokens (whitespace words); passing the other rules: "
        f"{s.others_docs} docs ({pct(s.others_docs, s.docs)}), {s.others_words} tokens "
        f"({pct(s.others_words, s.words)})",
        file=out,
    )
    print(
        f"{'':2}{'threshold':>12} {'docs kept':>10} {'docs %':>8} {'tokens kept':>12} {'tokens %':>8}",
        file=out,
    )
    for t, d, w in s.rows:
        mark = "* " if s.current is not None and t == s.current else "  "
        print(f"{mark}{t:12.6g} {d:10d} {pct(d, s.docs):>8} {w:12d} {pct(w, s.words):>8}", file=out)
    if s.current is not None:
        print(f"* current threshold in the config: {s.signal} {side} {s.current}", file=out)


def plot(table: pa.Table, s: Sweep, passing: np.ndarray, path: str) -> None:
    """Histogram of the signal over all documents and over those passing the other rules; threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = pc.cast(table[s.signal], pa.float64()).to_numpy(zero_copy_only=False)
    ok = ~np.isnan(values)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if ok.any():
        bins = np.histogram_bin_edges(values[ok], bins=60)
        ax.hist(values[ok], bins=bins, color="#c0c0c0", label="all annotated documents")
        ax.hist(values[ok & passing], bins=bins, color="#3070b0", label="passing the other select rules")
    if s.current is not None:
        ax.axvline(
            s.current,
            color="#d03020",
            linewidth=2,
            label=f"threshold {s.current} (keep {'>=' if s.keep_above else '<='})",
        )
    ax.set_xlabel(s.signal)
    ax.set_ylabel("documents")
    ax.legend()
    fig.tight_layout()
    fs, local = storage.resolve(path)
    fs.create_dir(os.path.dirname(local), recursive=True)
    with fs.open_output_stream(local) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def samples(
    output: str, table: pa.Table, s: Sweep, passing: np.ndarray, threshold: float, n: int, out=None
) -> None:
    """The n documents (passing the other rules) just on each side of the threshold, read back by row
    position."""
    out = out or sys.stdout
    values = pc.cast(table[s.signal], pa.float64()).to_numpy(zero_copy_only=False)
    idx = np.flatnonzero(passing & ~np.isnan(values))
    order = idx[np.argsort(values[idx], kind="stable")]
    split = int(np.searchsorted(values[order], threshold, side="left" if s.keep_above else "right"))
    below, above = order[max(0, split - n) : split], order[split : split + n]
    files = annotate_files(output)
    fs, _ = storage.resolve(files[0])
    ds = pads.dataset([storage.resolve(f)[1] for f in files], format="parquet", filesystem=fs)
    for label, rows in (("just below", below[::-1]), ("just above", above)):
        kept = "kept" if (label == "just above") == s.keep_above else "dropped"
        print(f"\n--- {len(rows)} documents {label} {threshold:g} ({kept}) ---", file=out)
        if not len(rows):
            continue
        docs = ds.take(pa.array(rows), columns=["id", "source", "text"]).to_pylist()
        for r, d in zip(rows, docs):
            text = " ".join((d["text"] or "").split())[:300]
            print(f"[{s.signal}={values[r]:.6g}] {d['id']} ({d['source']}): {text}", file=out)


def tune(
    output: str,
    signal: str,
    config_path: str | None = None,
    at: list[float] | None = None,
    n_samples: int = 0,
    plot_path: str | None = None,
    keep: str | None = None,
    out=None,
) -> Sweep:
    out = out or sys.stdout
    cfg = select_config(output, config_path)
    rule_list = rules.rules(cfg)
    column, rule, keep_above = pick_rule(rule_list, signal, keep)
    others = [r for r in rule_list if r is not rule]
    table = read_signals(output, list(dict.fromkeys([column, WORDS, *rules.columns(others)])))
    s, passing = sweep(table, column, rule, keep_above, others, at)
    print_sweep(s, out)
    plot_path = plot_path or storage.join(output, "tune", f"{column}.png")
    plot(table, s, passing, plot_path)
    print(f"histogram: {plot_path}", file=out)
    if n_samples:
        threshold = at[0] if at else s.current
        if threshold is None:
            raise UserError(f"--samples: no threshold for {column} in the config; give one with --at")
        samples(output, table, s, passing, threshold, n_samples, out)
    return s


def write_select(
    output: str, path: str, config_path: str | None, signal: str | None, at: list[float] | None
) -> str:
    """--write: the select rules tune combines with (--config's or the last run's), with --signal's rule at
    the --at threshold, written into a recipe that `phicurate validate` accepts."""
    from pipeline.tools import tune_params

    cfg = select_config(output, config_path)
    if signal:
        if not at or len(at) != 1:
            raise UserError("--write with --signal: give the one threshold to write with --at T")
        column, rule, _ = pick_rule(rules.rules(cfg), signal, None)
        fs, first = storage.resolve(annotate_files(output)[0])
        names = set(pads.dataset(first, format="parquet", filesystem=fs).schema.names)
        cfg = tune_params.set_rule(cfg, names, rule.reason if rule else column, at[0])
    return tune_params.write(path, cfg, config_path)
