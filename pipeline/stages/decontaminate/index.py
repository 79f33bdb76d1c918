"""The benchmark index and the matcher: which benchmark item, if any, a document contains.

Two ways an item is found, after the same normalization of both sides (lower case, apostrophes dropped,
every other run of punctuation, whitespace and line breaks one space, diacritics removed):
- a word n-gram (13 by default, as GPT-3 and lm-eval) of the item occurs in the document;
- an item shorter than the n-gram, or its longest field (an MMLU question), occurs whole, found with an
  Aho-Corasick automaton over the document's words.
Not evidence: n-grams and short texts found in more than `max_items_per_ngram` items (the 30-word
instruction of 895 MMLU moral_scenarios items), and n-grams of numbers only. A hit names the item with the
most matched words, so items that share an instruction are told apart by the text they do not share.

Why not datatrove's NGramsDecontIndexer/NGramsDecontFilter: its indexer reads benchmarks only through
lighteval (a download), its index keeps the task but not the item, and its normalization maps every number
to 0, so fee tables and score lists match MMLU items. Why not datatrove's `simplify_text`: besides the
numbers, it leaves apostrophes as word breaks ("Janet’s" -> "janet s", "Janets" -> "janets"). The n-gram
lookup is vectorized (word ids, a rolling 64-bit hash, a sorted array) instead of one string hash per
n-gram, which is what makes it faster than datatrove's filter (bench/decontam_speed.py).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import unicodedata
from dataclasses import dataclass
from itertools import repeat

import ahocorasick
import fsspec
import numpy as np

from pipeline.errors import UserError
from pipeline.stages.decontaminate.config import BenchmarkSet, DecontaminateConfig

logger = logging.getLogger(__name__)

_APOSTROPHES = re.compile("['’‘ʼ`´]")
_WORD = re.compile(r"[^\W_]+")
_COMBINING = re.compile(r"[\u0300-\u036f]")
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the rolling hash (golden ratio)


def normalize(text: str) -> list[str]:
    """Words of `text` as matched: see the module docstring."""
    text = text.lower()
    if not text.isascii():
        text = _COMBINING.sub("", unicodedata.normalize("NFKD", _APOSTROPHES.sub("", text)))
    elif "'" in text or "`" in text:
        text = _APOSTROPHES.sub("", text)
    return _WORD.findall(text)


@dataclass(frozen=True)
class Hit:
    benchmark: str
    item_id: str
    how: str  # '13-gram x4' or 'exact, 9 words'
    span: str  # the matched words of the document (normalized), shortened

    def detail(self) -> str:
        return f"{self.item_id} ({self.how}: '{self.span}')"


def _short(words: list[str], limit: int = 24) -> str:
    return " ".join(words) if len(words) <= limit else " ".join(words[:limit]) + " ..."


class BenchmarkIndex:
    """Built once on the driver; pickles (numpy arrays, a dict, an automaton) to go to the workers."""

    def __init__(self, n: int, min_exact_words: int, max_items: int):
        self.n, self.min_exact_words, self.max_items = n, min_exact_words, max_items
        self.vocab: dict[str, int] = {}  # word -> id >= 1; 0: a word in no item (its n-grams cannot match)
        self.items: list[tuple[str, str]] = []  # (benchmark, item id)
        self.counts: dict[str, int] = {}  # benchmark -> items
        self._seqs: list[np.ndarray] = []
        self._fields: list[list[str]] = []  # per item: its longest field, normalized

    def add(self, benchmark: str, item_id: str, fields: list[str]) -> None:
        words = [w for f in fields for w in normalize(f)]
        self.items.append((benchmark, item_id))
        self.counts[benchmark] = self.counts.get(benchmark, 0) + 1
        self._seqs.append(np.array([self.vocab.setdefault(w, len(self.vocab) + 1) for w in words], np.int64))
        self._fields.append(max((normalize(f) for f in fields), key=len))

    def build(self) -> "BenchmarkIndex":
        """Freeze what `add` collected into the lookup structures."""
        rng = np.random.default_rng(0)
        self.word_hash = rng.integers(0, 2**63, size=len(self.vocab) + 1, dtype=np.uint64) | np.uint64(1)
        numeric = np.zeros(len(self.vocab) + 1, bool)
        for w, i in self.vocab.items():
            numeric[i] = w.isdigit()
        self.offsets = np.cumsum([0] + [len(s) for s in self._seqs])
        self.flat = np.concatenate(self._seqs) if self._seqs else np.zeros(0, np.int64)
        owner = np.repeat(np.arange(len(self._seqs), dtype=np.int32), np.diff(self.offsets))
        h = self._hashes(self.flat) if len(self.flat) >= self.n else np.zeros(0, np.uint64)
        starts = np.arange(len(h))
        # windows inside one item, not of numbers only
        inside = owner[starts] == owner[starts + self.n - 1] if len(h) else np.zeros(0, bool)
        keep = inside & (_window_sum(~numeric[self.flat], self.n) > 0)
        h, owner, pos = h[keep], owner[starts[keep]], (starts[keep] - self.offsets[owner[starts[keep]]])
        order = np.lexsort((pos, owner, h))  # by n-gram, then item, then position
        h, owner, pos = h[order], owner[order], pos[order].astype(np.int32)
        first = np.ones(len(h), bool)  # an n-gram twice in one item counts once
        first[1:] = (h[1:] != h[:-1]) | (owner[1:] != owner[:-1])
        h, owner, pos = h[first], owner[first], pos[first]
        bounds = np.flatnonzero(np.r_[True, h[1:] != h[:-1], True]) if len(h) else np.zeros(1, np.int64)
        per = np.diff(bounds)  # items per n-gram (h is sorted)
        evidence = np.repeat(per <= self.max_items, per)
        self.shared_ngrams = int((per > self.max_items).sum())
        self.keys, self.key_item, self.key_pos = h[evidence], owner[evidence], pos[evidence]
        self._build_exact()
        del self._seqs, self._fields
        self.__dict__.pop("_by_id", None)  # only needed to build the automaton
        return self

    def _build_exact(self) -> None:
        """Whole items, and longest fields, shorter than the n-gram: one automaton over word strings."""
        texts: dict[str, set[int]] = {}
        for k in range(len(self.items)):
            whole = self.flat[self.offsets[k] : self.offsets[k + 1]]
            candidates = [self._fields[k]] + ([self._words(whole)] if len(whole) < self.n else [])
            for words in candidates:
                if self.min_exact_words <= len(words) < self.n and not all(w.isdigit() for w in words):
                    texts.setdefault(" ".join(words), set()).add(k)
        self.automaton = ahocorasick.Automaton()
        self.shared_exact = 0
        for text, owners in texts.items():
            if len(owners) > self.max_items:
                self.shared_exact += 1
                continue
            self.automaton.add_word(f" {text} ", (tuple(sorted(owners)), text))
        self.exact_texts = len(self.automaton)
        if self.exact_texts:
            self.automaton.make_automaton()

    def _words(self, ids: np.ndarray) -> list[str]:
        if not hasattr(self, "_by_id"):
            self._by_id = [""] * (len(self.vocab) + 1)
            for w, i in self.vocab.items():
                self._by_id[i] = w
        return [self._by_id[i] for i in ids]

    def _hashes(self, ids: np.ndarray) -> np.ndarray:
        """Rolling hash of every n-word window (uint64 arithmetic wraps, as a hash should)."""
        m = len(ids) - self.n + 1
        values = self.word_hash[ids]
        h = np.zeros(m, np.uint64)
        for j in range(self.n):
            h = h * _MULT + values[j : j + m]
        return h

    def find(self, text: str) -> Hit | None:
        """The benchmark item the text holds (the one with the most matched words), or None."""
        words = normalize(text)
        score: dict[int, int] = {}
        spans: dict[int, tuple[str, list[str]]] = {}
        if len(words) >= self.n and len(self.keys):
            ids = np.fromiter(map(self.vocab.get, words, repeat(0)), np.int64, len(words))
            known = _window_sum(ids == 0, self.n) == 0
            if known.any():
                windows = np.flatnonzero(known)
                h = self._hashes(ids)[windows]
                at = np.searchsorted(self.keys, h)
                found = self.keys[np.minimum(at, len(self.keys) - 1)] == h
                first: dict[int, int] = {}
                last: dict[int, int] = {}
                for w, r, hw in zip(windows[found].tolist(), at[found].tolist(), h[found].tolist()):
                    while r < len(self.keys) and int(self.keys[r]) == hw:  # every item with this n-gram
                        k, start = (
                            int(self.key_item[r]),
                            int(self.offsets[self.key_item[r]] + self.key_pos[r]),
                        )
                        if np.array_equal(self.flat[start : start + self.n], ids[w : w + self.n]):
                            score[k] = score.get(k, self.n - 1) + 1  # words covered by a run of n-grams
                            first.setdefault(k, w)
                            last[k] = w
                        r += 1
                for k in score:
                    spans[k] = (f"{self.n}-gram x{score[k] - self.n + 1}", words[first[k] : last[k] + self.n])
        if self.exact_texts and len(words) >= self.min_exact_words:
            for _, (owners, matched) in self.automaton.iter(" " + " ".join(words) + " "):
                length = matched.count(" ") + 1
                for k in owners:
                    if length > score.get(k, 0):
                        score[k] = length
                        spans[k] = (f"exact, {length} words", matched.split())
        if not score:
            return None
        k = max(score, key=lambda i: (score[i], -i))
        how, span = spans[k]
        benchmark, item_id = self.items[k]
        return Hit(benchmark, item_id, how, _short(span))

    def memory_bytes(self) -> int:
        """What one copy of the index holds: arrays, the vocabulary (dict and strings) and the automaton."""
        arrays = sum(a.nbytes for a in (self.keys, self.key_item, self.key_pos, self.flat, self.offsets))
        vocab = sys.getsizeof(self.vocab) + sum(sys.getsizeof(w) for w in self.vocab)
        items = sys.getsizeof(self.items) + sum(sys.getsizeof(b) + sys.getsizeof(i) for b, i in self.items)
        automaton = self.automaton.get_stats()["total_size"] if self.exact_texts else 0
        return int(arrays + self.word_hash.nbytes + vocab + items + automaton)

    def stats(self) -> dict:
        return {
            "ngram": self.n,
            "items": dict(self.counts),
            "ngrams": int(len(self.keys) and 1 + np.count_nonzero(self.keys[1:] != self.keys[:-1])),
            "shared_ngrams_ignored": self.shared_ngrams,
            "exact_texts": self.exact_texts,
            "shared_exact_texts_ignored": self.shared_exact,
            "vocabulary": len(self.vocab),
            "memory_mb": round(self.memory_bytes() / 2**20, 1),
        }


def _window_sum(flags: np.ndarray, n: int) -> np.ndarray:
    """For each n-long window, how many flags are set."""
    c = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
    return c[n:] - c[:-n]


def _read_set(b: BenchmarkSet, index: BenchmarkIndex) -> None:
    path = b.resolved_path()
    try:
        fh = fsspec.open(path, "rt", compression="infer", encoding="utf-8").open()
    except FileNotFoundError:
        raise UserError(f"decontaminate: benchmark file {b.path}: not found") from None
    with fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                fields = [str(rec[f]) for f in b.fields]
                if b.answer_field is not None:
                    fields.append(str(rec[str(rec[b.answer_field])]))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                wanted = b.fields + ([f"{b.answer_field} (naming a field)"] if b.answer_field else [])
                raise UserError(
                    f"{b.path} line {line_no}: expected a JSON object with fields {wanted} "
                    f"({type(e).__name__}: {e})"
                ) from None
            item_id = str(rec.get(b.id_field, f"line {line_no}")) if b.id_field else f"line {line_no}"
            index.add(b.label, item_id, fields)


def load_index(cfg: DecontaminateConfig) -> BenchmarkIndex:
    """Read every benchmark set; a bad line is a user error naming the file, the line and what was wrong."""
    index = BenchmarkIndex(cfg.ngram, cfg.min_exact_words, cfg.max_items_per_ngram)
    for b in cfg.benchmarks:
        _read_set(b, index)
    index.build()
    logger.info("decontaminate: index %s", index.stats())
    return index
