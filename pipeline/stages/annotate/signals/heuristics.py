"""Every value that datatrove's Gopher quality, Gopher repetition, C4 quality and FineWeb quality filters
measure, computed once per document from one spaCy tokenization, with no thresholds.

datatrove's filters each tokenize the text again (C4 runs spaCy once per kept line) and return only a
verdict. Here the measured values become columns, and `pipeline.stages.select.rules` turns them into the same
verdicts
for any thresholds (tests/test_signals.py checks that against the datatrove filters themselves).
Parameters that define *what* is measured (stop words, C4's line rules, FineWeb's short-line length) are
datatrove's defaults; the thresholds the verdicts compare against live in the `select` section.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
from datatrove.pipeline.filters.c4_filters import CITATION_REGEX, ELLIPSIS, END_PUNCTUATION, POLICY_SUBSTRINGS
from datatrove.pipeline.filters.gopher_quality_filter import STOP_WORDS
from datatrove.pipeline.filters.gopher_repetition_filter import find_duplicates
from datatrove.utils.text import PUNCTUATION_SET, TERMINAL_PUNCTUATION
from spacy.attrs import IDX, IS_PUNCT, IS_SPACE, LENGTH, ORTH

from pipeline.stages.annotate.config import DUP_N_GRAMS, TOP_N_GRAMS

C4_MIN_WORDS_PER_LINE = 3  # datatrove C4QualityFilter defaults: a line counts only if it passes these
C4_MAX_WORD_LENGTH = 1000
FW_SHORT_LINE_LENGTH = 30  # FineWebQualityFilter default: a line this short or shorter is "short"
FW_STOP_CHARS = tuple(TERMINAL_PUNCTUATION)
STOP_WORD_SET = set(STOP_WORDS)

# (column, Arrow type) of every measured value, grouped by the datatrove filter that measures it.
GOPHER_QUALITY_COLUMNS = [
    ("gopher_words", "int64"),  # words with at least one non-punctuation character
    ("gopher_avg_word_length", "float64"),  # mean length of those words
    ("gopher_hash_ratio", "float64"),  # '#' per word
    ("gopher_ellipsis_ratio", "float64"),  # '...' or '…' per word
    ("gopher_bullet_lines_ratio", "float64"),  # lines starting with '•' or '-'
    ("gopher_end_ellipsis_lines_ratio", "float64"),  # lines ending with '...' or '…'
    ("gopher_alpha_words_ratio", "float64"),  # words with an alphabetic character
    ("gopher_stop_words", "int64"),  # distinct stop words present (the, be, to, of, and, that, have, with)
]
GOPHER_REPETITION_COLUMNS = [
    ("rep_dup_para_frac", "float64"),
    ("rep_dup_para_char_frac", "float64"),
    ("rep_dup_line_frac", "float64"),
    ("rep_dup_line_char_frac", "float64"),
    *[(f"rep_top_{n}_gram", "float64") for n in TOP_N_GRAMS],
    *[(f"rep_dup_{n}_gram", "float64") for n in DUP_N_GRAMS],
]
C4_COLUMNS = [
    ("c4_sentences", "int64"),  # sentences in the lines C4 keeps (spaCy sentencizer per line)
    ("c4_lorem_line", "int64"),  # first counted line containing "lorem ipsum" (null: none)
    ("c4_curly_line", "int64"),  # first counted non-javascript line containing '{' (null: none)
]
FINEWEB_COLUMNS = [
    (
        "fw_line_punct_ratio",
        "float64",
    ),  # non-empty lines ending in terminal punctuation (null: no such lines)
    ("fw_short_line_ratio", "float64"),  # non-empty lines of at most 30 characters
    ("fw_char_dup_ratio", "float64"),  # characters in duplicated lines over characters without newlines
    ("fw_list_ratio", "float64"),  # newlines per word
]
HEURISTIC_COLUMNS = GOPHER_QUALITY_COLUMNS + GOPHER_REPETITION_COLUMNS + C4_COLUMNS + FINEWEB_COLUMNS

_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile("\n+")
_SPACY_CACHE = 1_000_000  # chunks spaCy's tokenizer remembers (its default, 10,000, is soon full)
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible modulo 2**64 (see _char_hashes)
_MIX = np.uint64(0xBF58476D1CE4E5B9)


@lru_cache(maxsize=1)
def _tokenizer():
    """The tokenizer datatrove uses for English words (spacy.blank('en')); its sentencizer's punctuation.

    Its chunk cache (a memo of the tokens of each whitespace-separated chunk, which do not depend on the
    context) stops taking entries at 10,000 chunks, after which most chunks of a web crawl are tokenized
    again from the affix rules: a larger cache gives the same tokens several times faster."""
    import spacy
    from spacy.pipeline import Sentencizer

    tokenizer = spacy.blank("en").tokenizer
    tokenizer.max_cache_size = _SPACY_CACHE
    return tokenizer, frozenset(Sentencizer.default_punct_chars)


def _count_sentences(tokens: list[tuple[str, bool]], punct_chars: frozenset) -> int:
    """spaCy's Sentencizer rule on (text, is_punct) tokens: a sentence ends after a token in `punct_chars`
    at the next token that is not punctuation. Used for the rare C4 line whose citations were cut out."""
    n, seen_period = 1, False
    for text, is_punct in tokens:
        in_punct_chars = text in punct_chars
        if seen_period and not is_punct and not in_punct_chars:
            n += 1
            seen_period = False
        elif in_punct_chars:
            seen_period = True
    return n


class _Words:
    """spaCy's tokens of a document, with per-word facts the signals need kept by spaCy's ORTH id (its own
    identity of a token's text): computed once per distinct word instead of once per occurrence."""

    def __init__(self):
        self.tokenizer, self.punct_chars = _tokenizer()
        self.facts: dict[int, tuple[int, int, int, int]] = {}
        self.cached: set[str] = set()  # chunks given to spaCy alone (see tokens)

    def tokens(self, text: str) -> np.ndarray:
        """(offset, length, is_punct, is_space, ORTH) of each token of `text`, as spaCy makes them.

        spaCy caches a chunk's tokens only while no special case ("\\n", "it's", ...) has been met in
        the same call, so in a web page almost every chunk after the first line break is tokenized from
        its affix rules again, in every document. Each chunk not met before is therefore first tokenized
        alone (which caches it when it holds no special case); the document's tokens are the same, as
        spaCy's cache holds exactly what tokenizing the chunk gives."""
        if len(self.cached) > _SPACY_CACHE:  # spaCy stops caching at max_cache_size: start again
            self.tokenizer._flush_cache()
            self.cached.clear()
        new = [c for c in dict.fromkeys(text.split()) if c not in self.cached]
        self.cached.update(new)
        for chunk in new:
            self.tokenizer(chunk)
        return self.tokenizer(text).to_array([IDX, LENGTH, IS_PUNCT, IS_SPACE, ORTH])

    def __call__(self, orths: list[int]) -> np.ndarray:
        """Rows (non-punctuation char, letter, stop word, sentence-ending char) for `orths`."""
        if len(self.facts) > _SPACY_CACHE:
            self.facts.clear()
        facts, strings = self.facts, self.tokenizer.vocab.strings
        for orth in orths:
            if orth not in facts:
                word = strings[orth]
                facts[orth] = (
                    any(ch not in PUNCTUATION_SET for ch in word),
                    any(c.isalpha() for c in word),
                    word in STOP_WORD_SET,
                    word in self.punct_chars,
                )
        return np.array([facts[o] for o in orths], np.int64).reshape(-1, 4)


@lru_cache(maxsize=1)
def _words() -> _Words:
    return _Words()


def measure(text: str) -> dict:
    """All heuristic values of one document (see HEURISTIC_COLUMNS)."""
    words = _words()
    # Offsets, lengths, flags and text ids in one array: no Python object per token.
    tokens = words.tokens(text)
    orths, ids = np.unique(tokens[:, 4], return_inverse=True)  # ids: the document's distinct token texts
    facts = words(orths.tolist())[ids]  # per token
    is_word = tokens[:, 3] == 0  # datatrove's words: tokens that are not whitespace
    lengths = tokens[is_word, 1].astype(np.int64)
    out = {}
    out.update(_gopher_quality(text, ids[is_word], lengths, facts[is_word]))
    out.update(_gopher_repetition(text, ids[is_word], lengths))
    out.update(_c4(text, tokens, facts, words))
    out.update(_fineweb(text, int(is_word.sum())))
    return out


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _gopher_quality(text: str, ids: np.ndarray, lengths: np.ndarray, facts: np.ndarray) -> dict:
    n_words = len(ids)
    non_symbol, alpha, stop, _ = facts.T
    n_non_symbol = int(non_symbol.sum())
    lines = text.splitlines()
    return {
        "gopher_words": n_non_symbol,
        "gopher_avg_word_length": int(lengths[non_symbol == 1].sum()) / n_non_symbol
        if n_non_symbol
        else None,
        "gopher_hash_ratio": _ratio(text.count("#"), n_words),
        "gopher_ellipsis_ratio": _ratio(text.count("...") + text.count("…"), n_words),
        "gopher_bullet_lines_ratio": _ratio(
            sum(s.lstrip().startswith(("•", "-")) for s in lines), len(lines)
        ),
        "gopher_end_ellipsis_lines_ratio": _ratio(
            sum(s.rstrip().endswith(("...", "…")) for s in lines), len(lines)
        ),
        "gopher_alpha_words_ratio": _ratio(int(alpha.sum()), n_words),
        "gopher_stop_words": len(np.unique(ids[stop == 1])),  # distinct: an id stands for one string
    }


def _gopher_repetition(text: str, ids: np.ndarray, lengths: np.ndarray) -> dict:
    """datatrove's n-gram measures with numpy instead of a Python string per n-gram and n. Top n-grams:
    exact ids of the word sequences (np.unique). Repeated n-grams (words joined without spaces, so
    different words can give one string): a hash of each n-gram's characters, and only the n-grams whose
    hash occurs twice are compared as strings (a collision can merge, never split), so the values are
    datatrove's exactly."""
    if not text:
        return {c: None for c, _ in GOPHER_REPETITION_COLUMNS}
    paragraphs = _PARAGRAPHS.split(text.strip())
    para_dups, para_chars = find_duplicates(paragraphs)
    lines = _LINES.split(text)
    line_dups, line_chars = find_duplicates(lines)
    out = {
        "rep_dup_para_frac": para_dups / len(paragraphs),
        "rep_dup_para_char_frac": para_chars / len(text),
        "rep_dup_line_frac": line_dups / len(lines),
        "rep_dup_line_char_frac": line_chars / len(text),
    }
    for n in TOP_N_GRAMS:
        out[f"rep_top_{n}_gram"] = 0.0
    for n in DUP_N_GRAMS:
        out[f"rep_dup_{n}_gram"] = 0.0
    if len(ids) < min(TOP_N_GRAMS + DUP_N_GRAMS):
        return out
    ends = np.concatenate([[0], np.cumsum(lengths)])  # word i is joined[ends[i]:ends[i + 1]]
    ends_list = ends.tolist()
    joined = "".join(text.split())  # == "".join(words): the tokens of a whitespace-free chunk make it up
    grams, size = ids.astype(np.int64), int(ids.max()) + 1
    for n in range(2, max(TOP_N_GRAMS) + 1):  # " ".join of space-free words: equal iff the same words
        if len(ids) < n:
            break
        key = grams[:-1] * size + ids[n - 1 :]  # (n-1)-gram id and the next word: the n-gram
        _, grams, counts = np.unique(key, return_inverse=True, return_counts=True)
        if n in TOP_N_GRAMS:
            freq = int(counts.max())
            top = int(np.argmax(counts[grams] == freq))  # ties: the first seen, as Counter.most_common
            out[f"rep_top_{n}_gram"] = (ends_list[top + n] - ends_list[top] + n - 1) * freq / len(text)
    chars = _char_prefix(joined)
    for n in DUP_N_GRAMS:  # "".join: different words can make the same string, so hash characters
        if len(ids) < n:
            break
        key = _char_hashes(chars, ends[:-n], ends[n:])
        where, cls = _repeats(key, lambda p, n=n: joined[ends_list[p] : ends_list[p + n]])
        out[f"rep_dup_{n}_gram"] = _repeated_chars(where, cls, ends_list, n) / len(text)
    return out


def _repeats(keys: np.ndarray, exact) -> tuple[list[int], list[int]]:
    """Positions (ascending) whose key occurs more than once, and for each the first of those positions
    whose `exact(position)` is equal: exact classes of every n-gram that is not unique."""
    order = np.argsort(keys, kind="stable")
    same = keys[order[1:]] == keys[order[:-1]]
    dup = np.zeros(len(keys), bool)
    dup[order[1:][same]] = True
    dup[order[:-1][same]] = True
    where = np.flatnonzero(dup).tolist()
    first: dict = {}
    return where, [first.setdefault(exact(p), p) for p in where]


def _repeated_chars(where: list[int], cls: list[int], ends: list[int], n: int) -> int:
    """datatrove's find_all_duplicate: characters in n-grams (words joined without spaces) seen before,
    skipping n words after each repeat. Only n-grams that occur twice can repeat, so only those are
    visited; every other position just moves the scan on by one."""
    seen: set[int] = set()
    repeated = idx = 0
    for p, c in zip(where, cls):
        if p < idx:
            continue
        if c in seen:
            repeated += ends[p + n] - ends[p]
            idx = p + n
        else:
            seen.add(c)
            idx = p + 1
    return repeated


_POWERS: list[np.ndarray] = []


def _powers(size: int) -> tuple[np.ndarray, np.ndarray]:
    """_BASE**i and _BASE**-i modulo 2**64 for i < size at least (numpy's uint64 products wrap around),
    kept for the next document."""
    if not _POWERS or len(_POWERS[0]) < size:
        size = 1 << max(12, (size - 1).bit_length())
        inverse = np.uint64(pow(int(_BASE), -1, 2**64))
        _POWERS[:] = [
            np.cumprod(np.concatenate([[np.uint64(1)], np.full(size - 1, factor)]))
            for factor in (_BASE, inverse)
        ]
    return _POWERS[0], _POWERS[1]


def _char_prefix(joined: str) -> np.ndarray:
    """Prefix sums of code point * _BASE**-i: a substring's polynomial hash is one subtraction away."""
    _, down = _powers(len(joined) + 1)
    cps = np.frombuffer(joined.encode("utf-32-le"), np.uint32).astype(np.uint64)
    return np.concatenate([[np.uint64(0)], np.cumsum(cps * down[: len(cps)])])


def _char_hashes(prefix: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Hash of joined[start:stop] for each pair, mixed with its length."""
    up, _ = _powers(len(prefix))
    return (prefix[stops] - prefix[starts]) * up[starts] + (stops - starts).astype(np.uint64) * _MIX


def _c4(text: str, tokens: np.ndarray, facts: np.ndarray, words: _Words) -> dict:
    """C4QualityFilter's line loop with its doc-level rules (lorem ipsum, '{') recorded instead of applied:
    the sentence count is what the filter counts when neither fires, which is all it needs otherwise.

    datatrove runs spaCy's sentencizer on each kept line; a line's tokens are the document's tokens
    between its offsets (a line break is always a whitespace token of its own, so no special case reaches
    across it), and the Sentencizer rule is counted for all kept lines at once (_sentences)."""
    sentences, lorem_line, curly_line = 0, None, None
    spans: list[tuple[int, int]] = []  # character ranges of the kept lines counted from the document
    pos = 0  # character offset of the current line
    for i, (line, with_end) in enumerate(zip(text.splitlines(), text.splitlines(keepends=True))):
        start = pos + len(line) - len(line.lstrip())
        pos += len(with_end)
        stripped = line.strip()
        line_words = stripped.split()
        if any(len(w) > C4_MAX_WORD_LENGTH for w in line_words):
            continue
        cleaned = CITATION_REGEX.sub("", stripped)
        if not cleaned.endswith(END_PUNCTUATION) or cleaned.endswith(ELLIPSIS):
            continue
        if len(line_words) < C4_MIN_WORDS_PER_LINE:
            continue
        lower = cleaned.lower()
        if lorem_line is None and "lorem ipsum" in lower:
            lorem_line = i
        if "javascript" in lower:
            continue
        if curly_line is None and "{" in cleaned:
            curly_line = i
        if any(p in lower for p in POLICY_SUBSTRINGS):
            continue
        if cleaned != stripped:  # citations removed: the line's tokens changed, tokenize it alone
            line_tokens = [(tok.text, tok.is_punct) for tok in words.tokenizer(cleaned)]
            sentences += _count_sentences(line_tokens, words.punct_chars)
        else:
            spans.append((start, start + len(stripped)))
    if spans:
        sentences += _sentences(tokens, facts, np.array(spans))
    return {"c4_sentences": sentences, "c4_lorem_line": lorem_line, "c4_curly_line": curly_line}


def _sentences(tokens: np.ndarray, facts: np.ndarray, spans: np.ndarray) -> int:
    """Sentences spaCy's Sentencizer finds in each character span, summed: one per span plus one per
    token that is neither punctuation nor a sentence-ending char and whose last such-or-sentence-ending
    token before it in the span is sentence-ending (other punctuation is passed over)."""
    ends = facts[:, 3] == 1  # in the sentencizer's punct_chars
    wordlike = (tokens[:, 2] == 0) & ~ends
    keep = np.flatnonzero(ends | wordlike)  # tokens the rule looks at, in order
    starts_here = np.zeros(len(keep), np.int64)
    starts_here[1:] = ends[keep[:-1]] & wordlike[keep[1:]]  # a new sentence at keep[k]
    csum = np.concatenate([[0], np.cumsum(starts_here)])
    first, stop = np.searchsorted(tokens[:, 0], spans.T.astype(np.uint64))  # token ranges of the spans
    lo, hi = np.searchsorted(keep, first), np.searchsorted(keep, stop)
    # transitions k with keep[k - 1] and keep[k] both in the span: lo < k < hi
    inside = np.where(hi > lo + 1, csum[hi] - csum[np.minimum(lo + 1, hi)], 0)
    return int(len(spans) + inside.sum())


def _fineweb(text: str, n_words: int) -> dict:
    lines = [line for line in text.split("\n") if line.strip() != ""]
    if not lines:
        return {c: None for c, _ in FINEWEB_COLUMNS}
    return {
        "fw_line_punct_ratio": sum(1 for line in lines if line.endswith(FW_STOP_CHARS)) / len(lines),
        "fw_short_line_ratio": sum(1 for line in lines if len(line) <= FW_SHORT_LINE_LENGTH) / len(lines),
        "fw_char_dup_ratio": find_duplicates(lines)[1] / len(text.replace("\n", "")),
        "fw_list_ratio": text.count("\n") / n_words if n_words else float("inf"),
    }
