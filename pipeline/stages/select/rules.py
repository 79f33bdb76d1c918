"""Selection rules: thresholds over the signal columns that `annotate` stores, evaluated with Arrow compute.

The rule order and the comparisons are those of datatrove's filters (Gopher quality, Gopher repetition,
C4 quality, FineWeb quality), so that a document's first failing rule here is the reason datatrove's
filter would give. `select`, `tune` and synth's quality checks all evaluate rules through this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

HEURISTIC_FILTERS = (
    "gopher_repetition",
    "gopher_quality",
    "c4_quality",
    "fineweb_quality",
)  # evaluation order


@dataclass(frozen=True)
class Rule:
    """One check: a document fails when `column <op> threshold` holds; reason = the drop_reason it gives."""

    reason: str  # "lang", "edu_score", "gopher_quality:gopher_short_doc", ...
    column: str
    # "<" / ">": value below / above threshold fails; "not_in": value outside the list; "present": not null;
    op: str
    #        "null": null fails; "lorem": C4's lorem ipsum line comes first
    #        (threshold: the curly column or None)
    threshold: Any = None
    exclude_zero: bool = False  # FineWeb's line_punct_exclude_zero

    @property
    def keeps_above(self) -> bool | None:
        """For tune: True if documents at or above the threshold pass, False if at or below, None
        otherwise."""
        return {"<": True, ">": False}.get(self.op)

    def fails(self, table: pa.Table) -> pa.ChunkedArray:
        v = table[self.column]
        if self.op == "<":
            m = pc.less(v, self.threshold)
            if self.exclude_zero:
                m = pc.and_(m, pc.not_equal(v, 0))
        elif self.op == ">":
            m = pc.greater(v, self.threshold)
        elif self.op == "not_in":
            m = pc.invert(pc.is_in(v, value_set=pa.array(self.threshold, pa.string())))
        elif self.op == "present":
            m = pc.is_valid(v)
        elif self.op == "null":
            m = pc.is_null(v)
        elif self.op == "lorem":
            m = pc.is_valid(v)
            if self.threshold is not None:
                curly = table[self.threshold]
                m = pc.and_(m, pc.or_(pc.is_null(curly), pc.less_equal(v, curly)))
        else:
            raise ValueError(f"unknown rule op {self.op}")
        return pc.fill_null(m, False)

    def detail(self, table: pa.Table) -> pa.ChunkedArray:
        v = table[self.column]
        if pa.types.is_floating(v.type):
            v = pc.round(v, 4)
        shown = pc.cast(v, pa.string())
        if self.op in ("<", ">"):
            suffix = f" {self.op} {self.threshold}"
        elif self.op == "not_in":
            suffix = f" not in {list(self.threshold)}"
        elif self.op == "null":
            return pa.chunked_array([pa.array([f"{self.column} is null (empty text)"] * len(table))])
        else:
            suffix = ""
        return pc.binary_join_element_wise(f"{self.column}=", pc.fill_null(shown, "null"), suffix, "")


def _bound(rules: list[Rule], reason: str, column: str, op: str, threshold, truthy: bool = True) -> None:
    """Add a comparison rule unless its threshold turns it off (datatrove's `if self.x and ...`)."""
    if threshold is None or (truthy and not threshold):
        return
    rules.append(Rule(reason, column, op, threshold))


def heuristic_rules(name: str, r) -> list[Rule]:
    """The rules of one datatrove filter (`name` in HEURISTIC_FILTERS) with thresholds `r`, in datatrove's
    order."""
    out: list[Rule] = []
    p = name + ":"
    if name == "gopher_quality":
        _bound(out, p + "gopher_short_doc", "gopher_words", "<", r.min_doc_words)
        _bound(out, p + "gopher_long_doc", "gopher_words", ">", r.max_doc_words)
        _bound(out, p + "gopher_below_avg_threshold", "gopher_avg_word_length", "<", r.min_avg_word_length)
        _bound(out, p + "gopher_above_avg_threshold", "gopher_avg_word_length", ">", r.max_avg_word_length)
        _bound(out, p + "gopher_too_many_hashes", "gopher_hash_ratio", ">", r.max_symbol_word_ratio)
        _bound(out, p + "gopher_too_many_ellipsis", "gopher_ellipsis_ratio", ">", r.max_symbol_word_ratio)
        _bound(out, p + "gopher_too_many_bullets", "gopher_bullet_lines_ratio", ">", r.max_bullet_lines_ratio)
        _bound(
            out,
            p + "gopher_too_many_end_ellipsis",
            "gopher_end_ellipsis_lines_ratio",
            ">",
            r.max_ellipsis_lines_ratio,
        )
        _bound(
            out,
            p + "gopher_below_alpha_threshold",
            "gopher_alpha_words_ratio",
            "<",
            r.max_non_alpha_words_ratio,
        )
        _bound(out, p + "gopher_enough_stop_words", "gopher_stop_words", "<", r.min_stop_words)
    elif name == "gopher_repetition":
        out.append(Rule(p + "empty", "rep_dup_para_frac", "null"))
        _bound(out, p + "dup_para_frac", "rep_dup_para_frac", ">", r.dup_para_frac)
        _bound(out, p + "dup_para_char_frac", "rep_dup_para_char_frac", ">", r.dup_para_char_frac)
        _bound(out, p + "dup_line_frac", "rep_dup_line_frac", ">", r.dup_line_frac)
        _bound(out, p + "dup_line_char_frac", "rep_dup_line_char_frac", ">", r.dup_line_char_frac)
        for n, frac in r.top_n_grams.items():
            _bound(out, p + f"top_{n}_gram", f"rep_top_{n}_gram", ">", frac, truthy=False)
        for n, frac in r.dup_n_grams.items():
            _bound(out, p + f"duplicated_{n}_n_grams", f"rep_dup_{n}_gram", ">", frac, truthy=False)
    elif name == "c4_quality":
        if r.filter_lorem_ipsum:
            out.append(
                Rule(
                    p + "lorem_ipsum",
                    "c4_lorem_line",
                    "lorem",
                    "c4_curly_line" if r.filter_curly_bracket else None,
                )
            )
        if r.filter_curly_bracket:
            out.append(Rule(p + "curly_bracket", "c4_curly_line", "present"))
        _bound(out, p + "too_few_sentences", "c4_sentences", "<", r.min_num_sentences, truthy=False)
    elif name == "fineweb_quality":
        out.append(Rule(p + "empty", "fw_line_punct_ratio", "null"))
        out.append(
            Rule(
                p + "line_punct_ratio",
                "fw_line_punct_ratio",
                "<",
                r.line_punct_thr,
                r.line_punct_exclude_zero,
            )
        )
        _bound(out, p + "short_line_ratio", "fw_short_line_ratio", ">", r.short_line_thr, truthy=False)
        _bound(out, p + "char_dup_ratio", "fw_char_dup_ratio", ">", r.char_duplicates_ratio, truthy=False)
        _bound(out, p + "list_ratio", "fw_list_ratio", ">", r.new_line_ratio, truthy=False)
    else:
        raise ValueError(f"unknown heuristic filter {name}")
    return out


def rules(cfg) -> list[Rule]:
    """Every active rule of a select-style config (`lang`, `lang_score`, the four filters, `edu_score`), in
    order."""
    out: list[Rule] = []
    if cfg.lang is not None:
        out.append(Rule("lang", "lang", "not_in", tuple(cfg.lang)))
    _bound(out, "lang_score", "lang_score", "<", cfg.lang_score, truthy=False)
    for name in HEURISTIC_FILTERS:
        section = getattr(cfg, name)
        if section is not None:
            out.extend(heuristic_rules(name, section))
    _bound(out, "edu_score", "edu_score", "<", cfg.edu_score, truthy=False)
    return out


def columns(rule_list: list[Rule]) -> list[str]:
    """Signal columns the rules read."""
    cols = []
    for r in rule_list:
        for c in (r.column, r.threshold if r.op == "lorem" else None):
            if c and c not in cols:
                cols.append(c)
    return cols


def evaluate(table: pa.Table, rule_list: list[Rule]) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """(reason, detail) of each row's first failing rule; both null where every rule passes."""
    missing = [c for c in columns(rule_list) if c not in table.column_names]
    if missing:
        raise KeyError(f"signal columns {missing} are missing (does annotate compute them?)")
    reason = pa.nulls(len(table), pa.string())
    detail = pa.nulls(len(table), pa.string())
    for r in reversed(rule_list):  # the earliest failing rule is applied last and wins
        failed = r.fails(table)
        reason = pc.if_else(failed, r.reason, reason)
        detail = pc.if_else(failed, r.detail(table), detail)
    return _chunked(reason), _chunked(detail)


def first_failure(table: pa.Table, cfg) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    """(drop_reason, drop_detail) arrays for a table of signal columns under a select-style config."""
    return evaluate(table, rules(cfg))


def filter_verdicts(table: pa.Table, cfg) -> dict[str, pa.ChunkedArray]:
    """Per active heuristic filter: the rule it fails on (datatrove's reason name), null where it passes."""
    out = {}
    for name in HEURISTIC_FILTERS:
        section = getattr(cfg, name)
        if section is not None:
            reason, _ = evaluate(table, heuristic_rules(name, section))
            out[name] = pc.replace_substring(reason, name + ":", "", max_replacements=1)
    return out


def _chunked(a) -> pa.ChunkedArray:
    return a if isinstance(a, pa.ChunkedArray) else pa.chunked_array([a])
