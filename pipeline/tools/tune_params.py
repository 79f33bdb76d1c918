"""The tunable settings of `select` (one per config field or n-gram entry), and writing them back as YAML.

Which rules a setting moves is found by changing it and diffing `rules.rules()` before and after, so the
page, `--write` and `select` share rules.py's logic instead of a second table of field -> column.
"""

from __future__ import annotations

import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from pipeline.errors import UserError
from pipeline.stages.annotate.config import DUP_N_GRAMS, TOP_N_GRAMS
from pipeline.stages.select import rules
from pipeline.stages.select.config import SelectConfig

SECTIONS = rules.HEURISTIC_FILTERS
N_GRAM_FIELDS = {"top_n_grams": TOP_N_GRAMS, "dup_n_grams": DUP_N_GRAMS}
OFF_MINUS_ONE = {("c4_quality", "min_num_sentences")}  # datatrove's "-1: off" (not nullable)


@dataclass
class Param:
    """One setting: `path` into the select section; how the config turns it off, if it can."""

    key: str  # "lang_score", "gopher_quality.min_doc_words", "gopher_repetition.top_n_grams.2"
    path: tuple  # ("gopher_quality", "min_doc_words"), ("gopher_repetition", "top_n_grams", 2)
    kind: str  # "number", "bool", "lang" or "section" (a whole filter on or off)
    integer: bool = False
    off: str | None = None  # "null", "remove" (n-gram entry), "-1"; None: always on (section off only)
    reasons: list[str] = field(default_factory=list)  # the rules it sets
    columns: list[str] = field(default_factory=list)
    keeps_above: bool | None = None
    value: Any = None  # the current value, or the default when the setting is off
    on: bool = True

    @property
    def section(self) -> str | None:
        return self.path[0] if len(self.path) > 1 or self.kind == "section" else None


def _nullable(annotation) -> bool:
    return type(None) in typing.get_args(annotation)


def _get(d: dict, path: tuple):
    for p in path:
        if d is None:
            return None
        d = d.get(p)
    return d


def _set(d: dict, path: tuple, value) -> dict:
    out = {**d}
    if len(path) == 1:
        out[path[0]] = value
    else:
        out[path[0]] = _set(out.get(path[0]) or {}, path[1:], value)
    return out


def _rule_map(cfg: SelectConfig) -> dict[str, rules.Rule]:
    return {r.reason: r for r in rules.rules(cfg)}


def _moved(full: dict, path: tuple, new) -> list[rules.Rule]:
    """Rules of the all-on config that `path = new` adds, removes or changes (in select's order)."""
    before = _rule_map(SelectConfig.model_validate(full))
    after = _rule_map(SelectConfig.model_validate(_set(full, path, new)))
    return [r for k, r in before.items() if after.get(k) != r] + [
        r for k, r in after.items() if k not in before
    ]


def rule_order() -> list[str]:
    """The reason of every rule select can apply, in select's order (every filter and setting on)."""
    return [r.reason for r in rules.rules(SelectConfig(edu_score=0.5))]


def params(cfg: SelectConfig, available: set[str]) -> list[Param]:
    """Every setting of select whose rules read columns in `available`, at cfg's values (defaults where
    cfg turns a setting or filter off, so that turning it on starts from datatrove's value)."""
    defaults = SelectConfig()
    cur = cfg.model_dump()
    full = defaults.model_dump()  # every filter on, so that each setting has its rules
    full["edu_score"] = cur["edu_score"] if cur["edu_score"] is not None else 0.5
    full["lang"] = cur["lang"] if cur["lang"] is not None else defaults.lang
    out: list[Param] = []

    def add(p: Param, probe) -> None:
        moved = _moved(full, p.path, probe)
        p.reasons = [r.reason for r in moved]
        p.columns = list(dict.fromkeys(c for c in rules.columns(moved) if c is not None))
        p.keeps_above = next((r.keeps_above for r in moved if r.keeps_above is not None), None)
        if p.columns and all(c in available for c in p.columns):
            out.append(p)

    lang = cur["lang"]
    add(Param("lang", ("lang",), "lang", off="null", value=lang or ["en"], on=lang is not None), ["xx"])
    for name in ("lang_score", "edu_score"):
        v = cur[name]
        p = Param(
            name, (name,), "number", off="null", value=v if v is not None else full[name], on=v is not None
        )
        add(p, full[name] / 2 + 0.01)
    for sec in SECTIONS:
        section_on = cur[sec] is not None
        sec_cur = cur[sec] or full[sec]
        out.append(Param(sec, (sec,), "section", off="null", on=section_on, columns=[]))
        model = type(getattr(defaults, sec))
        for fname, finfo in model.model_fields.items():
            if fname in N_GRAM_FIELDS:
                full[sec][fname] = {
                    n: getattr(defaults, sec).model_dump()[fname].get(n, 0.1) for n in N_GRAM_FIELDS[fname]
                }
                for n in N_GRAM_FIELDS[fname]:
                    v = sec_cur[fname].get(n)
                    p = Param(
                        f"{sec}.{fname}.{n}",
                        (sec, fname, n),
                        "number",
                        off="remove",
                        value=v if v is not None else full[sec][fname][n],
                        on=v is not None,
                    )
                    add(p, full[sec][fname][n] / 2 + 0.01)
                continue
            v, d = sec_cur[fname], full[sec][fname]
            if finfo.annotation is bool:
                add(Param(f"{sec}.{fname}", (sec, fname), "bool", value=v), not d)
                continue
            integer = int in (finfo.annotation, *typing.get_args(finfo.annotation))
            if (sec, fname) in OFF_MINUS_ONE:
                off, is_on = "-1", v != -1
            elif _nullable(finfo.annotation):
                off, is_on = "null", bool(v)  # null or 0 turns it off, as in datatrove
            else:
                off, is_on = None, True
            value = v if is_on else d
            p = Param(f"{sec}.{fname}", (sec, fname), "number", integer, off, value=value, on=is_on)
            add(p, d + 1 if integer else d / 2 + 0.001)
    # a section with none of its settings present (e.g. no such columns) is not shown
    shown = {p.section for p in out if p.kind != "section"}
    return [p for p in out if p.kind != "section" or p.key in shown]


def build(base: SelectConfig, ps: list[Param], values: dict[str, Any], on: dict[str, bool]) -> SelectConfig:
    """The select section for the page's state (values and on/off by Param.key); other fields from base."""
    d = base.model_dump()
    by_key = {p.key: p for p in ps}
    for sec in SECTIONS:
        if sec in by_key:
            sec_on = on.get(sec, by_key[sec].on)
            d[sec] = (d[sec] or getattr(SelectConfig(), sec).model_dump()) if sec_on else None
    for p in ps:
        if p.kind == "section" or (p.section and d[p.section] is None):
            continue
        v = values.get(p.key, p.value)
        if p.kind == "number" and v is not None:
            v = int(v) if p.integer and float(v) == int(float(v)) else v
        if on.get(p.key, p.on) or p.off is None:
            d = _set(d, p.path, v)
        elif p.off == "null":
            d = _set(d, p.path, None)
        elif p.off == "-1":
            d = _set(d, p.path, -1)
        else:  # "remove": the n-gram entry leaves its dict
            _get(d, p.path[:-1]).pop(p.path[-1], None)
    try:
        return SelectConfig.model_validate(d)
    except Exception as e:  # pydantic's message names the field and what it expects
        raise UserError(f"select: {e}") from None


def select_yaml(cfg: SelectConfig) -> str:
    return yaml.safe_dump({"select": cfg.model_dump()}, sort_keys=False, default_flow_style=False)


_TOP_KEY = re.compile(r"^[^\s#]")


def _replace_section(text: str, section: str) -> str:
    """`text` with its top-level `select:` block replaced (comments and layout elsewhere kept)."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(r"^select\s*:", line)), None)
    if start is None:
        return text.rstrip("\n") + "\n\n" + section
    end = next((j for j in range(start + 1, len(lines)) if _TOP_KEY.match(lines[j])), len(lines))
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].startswith("#")):
        end -= 1  # blank lines and column-0 comments before the next section belong to it
    return "".join(lines[:start]) + section + "".join(lines[end:])


def write(path: str, cfg: SelectConfig, base_path: str | None) -> str:
    """Write a recipe with cfg as its select section: `path` itself if it exists, else a copy of base_path
    (--config), else the select section alone. Returns a line for the user."""
    from pipeline.config import parse_config

    section = select_yaml(cfg)
    source = path if os.path.isfile(path) else base_path
    if source is None:
        text, note = section, "the select section only: add it to your recipe (it needs ingest too)"
    else:
        with open(source, encoding="utf-8") as f:
            base_text = f.read()
        text = _replace_section(base_text, section)
        old, new = yaml.safe_load(base_text) or {}, yaml.safe_load(text)
        if {k: v for k, v in old.items() if k != "select"} != {k: v for k, v in new.items() if k != "select"}:
            old["select"] = cfg.model_dump()  # the text edit touched another section: write parsed YAML
            text = yaml.safe_dump(old, sort_keys=False, default_flow_style=False)
        parsed = parse_config(yaml.safe_load(text), path)  # what `phicurate validate` checks
        if parsed.select != cfg:
            raise RuntimeError(f"{path}: the written select section reads back differently")
        note = (
            f"{source}'s recipe with this select section" if source != path else "its select section replaced"
        )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return f"wrote {path}: {note}"


def set_rule(cfg: SelectConfig, available: set[str], name: str, threshold: float) -> SelectConfig:
    """cfg with the setting behind rule (or column) `name` at `threshold`, turned on if it was off
    (for `tune --signal NAME --at T --write C`)."""
    ps = params(cfg, available)
    found = [p for p in ps if p.kind == "number" and (name in p.reasons or p.columns == [name])]
    if len(found) != 1:
        what = f"{len(found)} settings ({', '.join(p.key for p in found)})" if found else "no setting"
        raise UserError(f"--write: {what} of select set {name}; name one rule with --signal")
    return build(cfg, ps, {found[0].key: threshold}, {found[0].key: True})
