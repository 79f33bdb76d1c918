"""Phase recipes: which documents a phase takes from which stage output, and how many tokens of each.

A recipe names its sources (a stage's kept documents, optionally narrowed by `where` rules on their
columns) and gives each a share of the phase's token budget (`weight`) or a token count (`tokens`),
with the most epochs a small source may be repeated. What can be checked before any token is counted
is checked here when the config loads; whether a source holds enough tokens is checked by
`source_targets` once the mix stage has tokenized it, and a failure names the numbers.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from pydantic import Field, field_validator, model_validator

from pipeline.errors import UserError
from pipeline.section import Section

WHERE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*$")
OPS = {
    ">=": pc.greater_equal,
    "<=": pc.less_equal,
    "==": pc.equal,
    "!=": pc.not_equal,
    ">": pc.greater,
    "<": pc.less,
}


def parse_where(rule: str) -> tuple[str, str, object]:
    """'edu_score >= 0.6' -> ('edu_score', '>=', 0.6). The value is read as a YAML scalar (number, text,
    true/false)."""
    m = WHERE.match(rule)
    if not m:
        raise ValueError(
            f"rule '{rule}' is not 'COLUMN OP VALUE' with OP one of {' '.join(OPS)} (e.g. 'edu_score >= 0.6')"
        )
    column, op, raw = m.groups()
    value = yaml.safe_load(raw)
    if not isinstance(value, (int, float, str, bool)):
        raise ValueError(f"rule '{rule}': the value must be a number, true/false or text, got {raw!r}")
    return column, op, value


class MixSource(Section):
    """One source of a phase: documents of a stage's output, and how many of their tokens the phase takes."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")  # the key under `sources` in manifest.json
    stage: str  # whose kept documents to read: a stage before mix (ingest, annotate, select, dedup, synth)
    # rules that all must hold, 'COLUMN OP VALUE', e.g. 'edu_score >= 0.6', 'lang == en'
    where: list[str] = []
    # share of the phase's tokens (all sources of a phase: weights, summing to 1)
    weight: float | None = Field(None, gt=0, le=1)
    tokens: int | None = Field(None, ge=1)  # or: this many tokens (all sources of a phase: tokens)
    # how often the source's documents may be repeated to reach its share
    max_epochs: float = Field(1.0, gt=0)

    @field_validator("stage")
    @classmethod
    def _a_stage_before_mix(cls, stage: str) -> str:
        from pipeline.registry import ORDER  # the registry imports this module's section: resolved at use

        before = ORDER[: ORDER.index("mix")]
        if stage not in before:
            raise ValueError(f"'{stage}' is not a stage mix can read; give one of {', '.join(before)}")
        return stage

    @field_validator("where")
    @classmethod
    def _rules_parse(cls, rules: list[str]) -> list[str]:
        for r in rules:
            parse_where(r)
        return rules

    @model_validator(mode="after")
    def _weight_or_tokens(self) -> "MixSource":
        if (self.weight is None) == (self.tokens is None):
            raise ValueError(
                f"source '{self.name}': give exactly one of 'weight' (share of the phase) or 'tokens'"
            )
        return self


class PhaseRecipe(Section):
    """The documents of one training phase."""

    # the phase's token budget; null: the most the sources allow within their max_epochs
    tokens: int | None = Field(None, ge=1)
    sources: list[MixSource] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> "PhaseRecipe":
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique within a phase, got {names}")
        weighted = [s for s in self.sources if s.weight is not None]
        if weighted and len(weighted) != len(self.sources):
            raise ValueError(
                "give every source of a phase a 'weight', or every source 'tokens', not a mix of both"
            )
        if weighted:
            total = sum(s.weight for s in weighted)
            if not math.isclose(total, 1.0, abs_tol=1e-6):
                listing = ", ".join(f"{s.name}={s.weight}" for s in weighted)
                raise ValueError(f"source weights must sum to 1, got {total:g} ({listing})")
        elif self.tokens is not None and self.tokens != sum(s.tokens for s in self.sources):
            raise ValueError(
                f"phase tokens {self.tokens:,} differ from the sum of its sources' tokens "
                f"{sum(s.tokens for s in self.sources):,}; give one or the other"
            )
        return self


def where_mask(table: pa.Table, rules: list[str], where: str) -> np.ndarray:
    """Rows of `table` for which every rule holds (a null value fails the rule). `where` names the config key
    for errors."""
    mask = np.ones(table.num_rows, dtype=bool)
    for rule in rules:
        column, op, value = parse_where(rule)
        if column not in table.column_names:
            raise UserError(
                f"{where}: rule '{rule}': no column '{column}' (columns: {', '.join(table.column_names)})"
            )
        try:
            hit = OPS[op](table[column], pa.scalar(value))
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise UserError(
                f"{where}: rule '{rule}': cannot compare column '{column}' ({table[column].type}) with "
                f"{value!r}: {e}"
            ) from None
        mask &= pc.fill_null(hit, False).to_numpy(zero_copy_only=False)
    return mask


def source_targets(phase: str, recipe: PhaseRecipe, available: dict[str, int]) -> dict[str, int]:
    """Tokens each source contributes, given the tokens its selected documents hold; a UserError with the
    numbers when a source cannot reach its share within `max_epochs`."""
    caps = {s.name: available[s.name] * s.max_epochs for s in recipe.sources}
    if recipe.sources[0].tokens is not None:
        targets = {s.name: s.tokens for s in recipe.sources}
        budget = sum(targets.values())
    elif recipe.tokens is not None:
        budget = recipe.tokens
        targets = {s.name: round(budget * s.weight) for s in recipe.sources}
    else:  # the largest budget every source can serve within its epoch cap
        budget = min(math.floor(caps[s.name] / s.weight) for s in recipe.sources)
        targets = {s.name: math.floor(budget * s.weight) for s in recipe.sources}
    problems = []
    for s in recipe.sources:
        need, have = targets[s.name], available[s.name]
        if need > caps[s.name] or have == 0:
            share = f"weight {s.weight} of {budget:,}" if s.weight is not None else "its 'tokens'"
            fix = (
                f"raise its max_epochs to {math.ceil(need / have * 100) / 100:g}, lower its share"
                if have
                else "loosen its 'where' rules or check that stage's output"
            )
            problems.append(
                f"source '{s.name}' (stage {s.stage}{', where ' + ' and '.join(s.where) if s.where else ''}) "
                "needs "
                f"{need:,} tokens ({share}) but holds {have:,} tokens x max_epochs {s.max_epochs:g} = "
                f"{math.floor(caps[s.name]):,}: {fix}"
                + (" or lower the phase's tokens" if recipe.tokens is not None else "")
            )
    if problems:
        raise UserError(f"mix.{phase}: impossible recipe:\n  " + "\n  ".join(problems))
    return targets


SELECT_BITS = 16  # a source's documents fall into 2**16 hash buckets; a phase takes or leaves whole buckets


def doc_hash(key: str, ids: list, doc_sources: list) -> np.ndarray:
    """A seeded 64-bit hash of each document (its id and its own `source`): the same on every machine.

    Per document in the task that holds it (hashlib: pyarrow has no hash kernel in Python), about a
    microsecond each, next to the milliseconds of tokenizing it."""
    salt = hashlib.sha256(key.encode()).digest()[:16]
    return np.fromiter(
        (
            int.from_bytes(
                hashlib.blake2b(f"{i}\x00{s}".encode(), digest_size=8, salt=salt).digest(), "little"
            )
            for i, s in zip(ids, doc_sources)
        ),
        dtype=np.uint64,
        count=len(ids),
    )


def buckets(hashes: np.ndarray, bits: int = SELECT_BITS) -> np.ndarray:
    return (hashes >> np.uint64(64 - bits)).astype(np.int64)


@dataclass(frozen=True)
class Cut:
    """What a phase takes of a source: every document `passes` times, and once more each document whose
    hash bucket is below `below`. `tokens` is what that adds up to (exactly: from the bucket tallies), and
    `tolerance` the tokens of the bucket at the cut: |tokens - target| never exceeds it."""

    passes: int
    below: int
    tokens: int
    tolerance: int

    def copies(self, bucket: np.ndarray) -> np.ndarray:
        return self.passes + (bucket < self.below).astype(np.int64)


def cut(bucket_tokens: np.ndarray, target: int, max_epochs: float) -> Cut:
    """The cut of a source whose eligible documents hold `bucket_tokens[b]` tokens in hash bucket b.

    Whole passes, then the prefix of buckets whose tokens come closest to the remainder (ties: the longer
    one), never beyond `max_epochs` passes over the source. Decided from the tallies alone, so each task
    can apply it to its own documents (no sort of the documents anywhere)."""
    total = int(bucket_tokens.sum())
    if target <= 0 or total == 0:
        return Cut(0, 0, 0, 0)
    cap = math.floor(total * max_epochs)
    passes, rest = divmod(min(target, cap), total)
    cum = np.concatenate([[0], np.cumsum(bucket_tokens, dtype=np.int64)])
    # cum[j] >= rest > cum[j - 1]: bucket j - 1 holds the cut, on one side of it or the other
    j = int(np.searchsorted(cum, rest, side="left"))
    boundary = int(bucket_tokens[j - 1]) if rest else 0
    i = j - 1 if rest and (rest - cum[j - 1] < cum[j] - rest or passes * total + cum[j] > cap) else j
    return Cut(int(passes), i, int(passes * total + cum[i]), boundary)
