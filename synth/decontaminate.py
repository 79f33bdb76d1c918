"""N-gram decontamination against benchmark test sets, for synthetic text and web documents alike.

A document is contaminated when it shares a word n-gram with a benchmark item (13-grams by default,
as GPT-3 and lm-eval's janitor). Strict mode follows Cosmopedia: 10-grams, each hit confirmed by a
text diff: the share of the benchmark item found in matching blocks of the document around the hit
must exceed `min_diff_ratio` (0.5).

Why not datatrove's `NGramsDecontIndexer`/`NGramsDecontFilter`: the indexer loads benchmarks only
through lighteval (a download) and its index keeps the task name but not the item, while a dropped
document must name the item it hit. We reuse datatrove's text normalization and n-gram hashing, so
both sides are normalized the same way as there.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
from datatrove.utils.hashing import HashConfig, create_hash_func
from datatrove.utils.text import TextNormConfig, ngrams, simplify_text
from pydantic import Field

from pipeline.errors import UserError
from pipeline.section import Section

REASON = "contaminated"
_NORM = TextNormConfig()
_HASH = create_hash_func(HashConfig())


class BenchmarkFile(Section):
    path: str  # a JSONL test set (.gz/.zst/.bz2 read by name), one item per line
    name: str | None = None  # shown in drop_detail; default: the file name without extensions
    # joined into an item's text, e.g. [prompt, canonical_solution]
    fields: list[str] = Field(default=["text"], min_length=1)
    id_field: str | None = None  # the item's id in drop_detail; default: its line number


class DecontaminationConfig(Section):
    benchmarks: list[BenchmarkFile] = Field(min_length=1)
    ngram: int | None = Field(None, ge=3)  # word n-gram length; default 13, or 10 in strict mode
    strict: bool = False  # Cosmopedia: 10-grams, each hit confirmed by a difflib ratio above min_diff_ratio
    min_diff_ratio: float = Field(0.5, gt=0, le=1)  # strict mode: share of the item found in the document

    @property
    def n(self) -> int:
        return self.ngram or (10 if self.strict else 13)


def words(text: str) -> list[str]:
    """Lower-cased words without punctuation, numbers and diacritics normalized (datatrove's
    simplify_text)."""
    return simplify_text(text, _NORM).split()


@dataclass
class Item:
    benchmark: str
    item_id: str
    words: list[str]


@dataclass
class BenchmarkIndex:
    """n-gram hash -> benchmark items containing it."""

    n: int
    strict: bool
    min_diff_ratio: float
    items: list[Item] = field(default_factory=list)
    grams: dict[int, list[int]] = field(default_factory=dict)
    too_short: int = 0  # items with fewer than n words: no n-gram can find them

    def add(self, item: Item) -> None:
        if len(item.words) < self.n:
            self.too_short += 1
            return
        k = len(self.items)
        self.items.append(item)
        for h in {_HASH(" ".join(g)) for g in ngrams(item.words, self.n)}:
            hits = self.grams.setdefault(h, [])
            if not hits or hits[-1] != k:
                hits.append(k)

    def find(self, text: str) -> str | None:
        """The first benchmark item the text is contaminated with, as 'benchmark:item_id', or None."""
        doc = words(text)
        checked: set[int] = set()
        for pos, g in enumerate(ngrams(doc, self.n)):
            for k in self.grams.get(_HASH(" ".join(g)), ()):
                if k in checked:
                    continue
                checked.add(k)
                item = self.items[k]
                if not self.strict:
                    return f"{item.benchmark}:{item.item_id} ({self.n}-gram '{' '.join(g)}')"
                ratio = _diff_ratio(item.words, doc, pos)
                if ratio > self.min_diff_ratio:
                    return f"{item.benchmark}:{item.item_id} ({self.n}-gram hit, diff ratio {ratio:.2f})"
        return None


def _diff_ratio(item: list[str], doc: list[str], pos: int) -> float:
    """Share of the item's characters in blocks matching the document around the hit (Cosmopedia's check)."""
    a = " ".join(item)
    b = " ".join(doc[max(0, pos - len(item)) : pos + 2 * len(item)])
    blocks = difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks()
    return sum(m.size for m in blocks) / max(1, len(a))


def _name(path: str) -> str:
    base = os.path.basename(path)
    return base.split(".")[0] or base


def load_index(cfg: DecontaminationConfig) -> BenchmarkIndex:
    """Read every benchmark file; a bad line is a user error naming the file, line and what was wrong."""
    index = BenchmarkIndex(cfg.n, cfg.strict, cfg.min_diff_ratio)
    for b in cfg.benchmarks:
        name = b.name or _name(b.path)
        try:
            fh = fsspec.open(b.path, "rt", compression="infer", encoding="utf-8").open()
        except FileNotFoundError:
            raise UserError(f"synth.decontamination.benchmarks: {b.path}: file not found") from None
        with fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    text = "\n".join(str(rec[f]) for f in b.fields)
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise UserError(
                        f"{b.path} line {line_no}: expected a JSON object with fields {b.fields} "
                        f"({type(e).__name__}: {e})"
                    ) from None
                item_id = str(rec.get(b.id_field, line_no)) if b.id_field else f"line {line_no}"
                index.add(Item(name, item_id, words(text)))
    return index


def mark(batch: pa.Table, index: BenchmarkIndex) -> pa.Table:
    """Set drop_reason `contaminated` (drop_detail: the benchmark item hit) on documents not dropped yet."""
    n = batch.num_rows
    reason = batch["drop_reason"] if "drop_reason" in batch.column_names else pa.nulls(n, pa.string())
    detail = batch["drop_detail"] if "drop_detail" in batch.column_names else pa.nulls(n, pa.string())
    live = pc.is_null(reason).to_pylist()
    texts = batch["text"].to_pylist()
    hits = [index.find(t or "") if ok else None for t, ok in zip(texts, live)]
    hit = pa.array([h is not None for h in hits])
    reason = pc.if_else(hit, REASON, reason)
    detail = pc.if_else(hit, pa.array(hits, pa.string()), detail)
    for name, col in (("drop_reason", reason), ("drop_detail", detail)):
        if name in batch.column_names:
            batch = batch.drop_columns([name])
        batch = batch.append_column(name, col)
    return batch


def decontaminate(ds, cfg: DecontaminationConfig):
    """A Ray Dataset of documents with `contaminated` drops marked (existing drops pass through unchanged)."""
    return ds.map_batches(mark, fn_args=(load_index(cfg),), batch_format="pyarrow")
