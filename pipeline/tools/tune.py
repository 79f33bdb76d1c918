"""`phicurate tune OUTPUT --signal NAME`: what a threshold on one signal keeps, without recomputing anything.

Streams only the signal columns of annotate's Parquet output, a row group at a time, so memory does not
grow with the corpus: a first pass totals the documents and words, evaluates the other active select rules
and keeps a seeded sample of the signal's values (for the default threshold grid, its quantiles); a second
pass counts exactly, per threshold, what passes (a binary search per threshold in each batch) and fills the
histogram. The counts are those `select` would produce with that threshold (tests/test_tune.py checks it).
`--samples` reads back the text of only the documents it prints.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import UserError
from pipeline.stages.select import rules

WORDS = "n_words"  # whitespace words per document, the runner's token count
GRID_SAMPLE = 1_000_000  # signal values the default threshold grid's quantiles are taken from (seeded)
SEED = 0
HIST_BINS = 60


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


def _dataset(output: str) -> pads.Dataset:
    files = annotate_files(output)
    fs, _ = storage.resolve(files[0])
    return pads.dataset([storage.resolve(f)[1] for f in files], format="parquet", filesystem=fs)


def check_columns(output: str, columns: list[str]) -> pa.Schema:
    """annotate's schema, once every named column is in it."""
    schema = _dataset(output).schema
    missing = [c for c in columns if c not in schema.names]
    if missing:
        hint = " (edu_score needs annotate.edu_model)" if "edu_score" in missing else ""
        raise UserError(
            f"{output}/annotate has no column(s) {missing}{hint}; numeric signals: {numeric_columns(schema)}"
        )
    return schema


def read_signals(output: str, columns: list[str]) -> pa.Table:
    """Only the named columns of annotate's output, in row order (the server holds them in memory)."""
    check_columns(output, columns)
    return _dataset(output).to_table(columns=columns)


def batches(output: str, columns: list[str]) -> Iterator[pa.Table]:
    """The named columns of annotate's output a row group at a time, in row order (file by file)."""
    for uri in annotate_files(output):
        fs, path = storage.resolve(uri)
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            for i in range(pf.num_row_groups):
                yield pf.read_row_group(i, columns=columns)


def read_rows(output: str, rows: list[int], columns: list[str]) -> list[dict]:
    """The named columns of the documents at these row positions, reading only the row groups that hold
    them (found from the footers)."""
    want = sorted(set(rows))
    got: dict[int, dict] = {}
    start = 0
    for uri in annotate_files(output):
        fs, path = storage.resolve(uri)
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            for i in range(pf.num_row_groups):
                n = pf.metadata.row_group(i).num_rows
                inside = [r for r in want if start <= r < start + n]
                if inside:
                    t = pf.read_row_group(i, columns=columns).take(pa.array([r - start for r in inside]))
                    got.update(zip(inside, t.to_pylist()))
                start += n
    return [got[r] for r in rows]


def _total_rows(output: str) -> int:
    total = 0
    for uri in annotate_files(output):
        fs, path = storage.resolve(uri)
        with fs.open_input_file(path) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def numeric_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]


def _scan(output: str, signal: str, others: list[rules.Rule]) -> Iterator[tuple[np.ndarray, ...]]:
    """(values, words, passing) per batch: the signal as float (nulls NaN: they never fail, as in select),
    each document's words, and whether it passes every other rule."""
    for t in batches(output, list(dict.fromkeys([signal, WORDS, *rules.columns(others)]))):
        passing = np.ones(t.num_rows, dtype=bool)
        for r in others:
            passing &= ~r.fails(t).to_numpy(zero_copy_only=False)
        values = pc.cast(t[signal], pa.float64()).to_numpy(zero_copy_only=False)
        yield values, t[WORDS].to_numpy(zero_copy_only=False).astype(np.int64), passing


@dataclass
class Histogram:
    edges: np.ndarray
    all: np.ndarray  # documents per bin
    passing: np.ndarray  # ... of those passing the other rules


def sweep(
    output: str,
    signal: str,
    rule: rules.Rule | None,
    keep_above: bool,
    others: list[rules.Rule],
    at: list[float] | None,
    steps: int = 20,
) -> tuple[Sweep, Histogram]:
    """Docs and words kept for each threshold, counted exactly in two streaming passes; and the histogram."""
    field = check_columns(output, list(dict.fromkeys([signal, WORDS, *rules.columns(others)]))).field(signal)
    if not (pa.types.is_integer(field.type) or pa.types.is_floating(field.type)):
        raise UserError(f"--signal {signal}: not a numeric column ({field.type})")
    docs = words = others_docs = others_words = 0
    lo, hi = np.inf, -np.inf
    total = _total_rows(output)
    p = min(1.0, GRID_SAMPLE / total) if total else 1.0
    rng = np.random.default_rng(SEED)
    grid_values = []
    for v, w, ok in _scan(output, signal, others):
        docs += len(v)
        words += int(w.sum())
        others_docs += int(ok.sum())
        others_words += int(w[ok].sum())
        finite = v[~np.isnan(v)]
        if len(finite):
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        chosen = v[ok & ~np.isnan(v)]
        grid_values.append(chosen if p == 1.0 else chosen[rng.random(len(chosen)) < p])
    current = rule.threshold if rule is not None else None
    if at:
        thresholds = sorted(at)
    else:  # the signal's quantiles among documents passing the other rules, and the configured threshold
        sampled = np.concatenate(grid_values) if grid_values else np.array([])
        grid = set(np.quantile(sampled, np.linspace(0, 1, steps + 1)).tolist()) if len(sampled) else set()
        thresholds = sorted(grid | ({current} if current is not None else set()))
    del grid_values
    if lo > hi:
        lo, hi = 0.0, 1.0
    elif lo == hi:  # as numpy's histogram_bin_edges does for a constant
        lo, hi = lo - 0.5, hi + 0.5
    hist = Histogram(
        np.linspace(lo, hi, HIST_BINS + 1), np.zeros(HIST_BINS, np.int64), np.zeros(HIST_BINS, np.int64)
    )
    failed_n = np.zeros(len(thresholds), np.int64)
    failed_w = np.zeros(len(thresholds), np.int64)
    ts = np.array(thresholds, dtype=float)
    for v, w, ok in _scan(output, signal, others):
        finite = ~np.isnan(v)
        hist.all += np.histogram(v[finite], hist.edges)[0]
        hist.passing += np.histogram(v[finite & ok], hist.edges)[0]
        sel = ok & finite
        order = np.argsort(v[sel], kind="stable")
        vs, cum = v[sel][order], np.concatenate([[0], np.cumsum(w[sel][order])])
        if keep_above:  # a document fails when value < t
            k = np.searchsorted(vs, ts, side="left")
            failed_n += k
            failed_w += cum[k]
        else:  # fails when value > t
            k = np.searchsorted(vs, ts, side="right")
            failed_n += len(vs) - k
            failed_w += cum[-1] - cum[k]
    rows = [
        (float(t), others_docs - int(n), others_words - int(fw))
        for t, n, fw in zip(thresholds, failed_n, failed_w)
    ]
    return Sweep(signal, keep_above, current, docs, words, others_docs, others_words, rows), hist


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


def plot(s: Sweep, hist: Histogram, path: str) -> None:
    """Histogram of the signal over all documents and over those passing the other rules; threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    if hist.all.any():
        ax.stairs(hist.all, hist.edges, fill=True, color="#c0c0c0", label="all annotated documents")
        ax.stairs(
            hist.passing, hist.edges, fill=True, color="#3070b0", label="passing the other select rules"
        )
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


def samples(output: str, s: Sweep, others: list[rules.Rule], threshold: float, n: int, out=None) -> None:
    """The n documents (passing the other rules) just on each side of the threshold: the nearest values
    kept while streaming (ties in row order, as a stable sort gives), their text read back by row position."""
    out = out or sys.stdout
    below_v, below_r = np.array([]), np.array([], np.int64)  # the n largest (value, row) below
    above_v, above_r = np.array([]), np.array([], np.int64)  # the n smallest at or above
    start = 0
    for v, _, ok in _scan(output, s.signal, others):
        idx = np.flatnonzero(ok & ~np.isnan(v))
        vals, rows = v[idx], idx + start
        start += len(v)
        is_below = vals < threshold if s.keep_above else vals <= threshold
        bv, br = np.concatenate([below_v, vals[is_below]]), np.concatenate([below_r, rows[is_below]])
        o = np.lexsort((br, bv))[-n:] if n else np.array([], np.int64)
        below_v, below_r = bv[o], br[o]
        av, ar = np.concatenate([above_v, vals[~is_below]]), np.concatenate([above_r, rows[~is_below]])
        o = np.lexsort((ar, av))[:n]
        above_v, above_r = av[o], ar[o]
    for label, vals, rows in (("just below", below_v[::-1], below_r[::-1]), ("just above", above_v, above_r)):
        kept = "kept" if (label == "just above") == s.keep_above else "dropped"
        print(f"\n--- {len(rows)} documents {label} {threshold:g} ({kept}) ---", file=out)
        if not len(rows):
            continue
        docs = read_rows(output, [int(r) for r in rows], ["id", "source", "text"])
        for value, d in zip(vals, docs):
            text = " ".join((d.get("text") or "").split())[:300]
            print(f"[{s.signal}={value:.6g}] {d['id']} ({d['source']}): {text}", file=out)


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
    s, hist = sweep(output, column, rule, keep_above, others, at)
    print_sweep(s, out)
    plot_path = plot_path or storage.join(output, "tune", f"{column}.png")
    plot(s, hist, plot_path)
    print(f"histogram: {plot_path}", file=out)
    if n_samples:
        threshold = at[0] if at else s.current
        if threshold is None:
            raise UserError(f"--samples: no threshold for {column} in the config; give one with --at")
        samples(output, s, others, threshold, n_samples, out)
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
