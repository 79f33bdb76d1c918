"""Every value that datatrove's Gopher quality, Gopher repetition, C4 quality and FineWeb quality filters
measure, computed once per document from one spaCy tokenization (signals/tokens.py), with no thresholds.

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
from itertools import compress, repeat

import numpy as np
from datatrove.pipeline.filters.c4_filters import CITATION_REGEX, ELLIPSIS, END_PUNCTUATION, POLICY_SUBSTRINGS
from datatrove.utils.text import TERMINAL_PUNCTUATION

from pipeline.stages.annotate.config import DUP_N_GRAMS, TOP_N_GRAMS
from pipeline.stages.annotate.signals.tokens import ALPHA, NON_SYMBOL, PUNCT, SENT_END, SPACE, STOP, Vocab

C4_MIN_WORDS_PER_LINE = 3  # datatrove C4QualityFilter defaults: a line counts only if it passes these
C4_MAX_WORD_LENGTH = 1000
FW_SHORT_LINE_LENGTH = 30  # FineWebQualityFilter default: a line this short or shorter is "short"
FW_STOP_CHARS = tuple(TERMINAL_PUNCTUATION)
# A line whose stripped text does not end with one of these cannot pass C4's end-punctuation rule: removing
# citations (which all end with "]") keeps the last character of any other line.
C4_LAST_CHARS = tuple({p[-1] for p in END_PUNCTUATION} | {"]"})

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
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible modulo 2**64 (see _char_hashes)
_MIX = np.uint64(0xBF58476D1CE4E5B9)


@lru_cache(maxsize=1)
def vocab() -> Vocab:
    """The process's tokenizer and what it remembers (one per process: models and pieces load once)."""
    return Vocab()


def measure_batch(texts: list[str]) -> dict[str, list]:
    """All heuristic values of each text, as columns (see HEURISTIC_COLUMNS); the batch's unseen pieces of
    text are tokenized together."""
    v = vocab()
    v.forget_if_full()
    rows = [_measure(t, offsets, words, v) for t, (offsets, words) in zip(texts, v.tokens(texts))]
    return {name: [r[name] for r in rows] for name, _ in HEURISTIC_COLUMNS}


def measure(text: str) -> dict:
    """All heuristic values of one document."""
    return {name: col[0] for name, col in measure_batch([text]).items()}


def _measure(text: str, offsets: np.ndarray, words: np.ndarray, v: Vocab) -> dict:
    facts = v.facts[words]  # per token; arrays throughout, no Python object per token
    is_word = ~facts[:, SPACE]  # datatrove's words: tokens that are not whitespace
    ids = words[is_word]  # word ids: one per distinct string
    lengths = v.length[ids]
    lines = text.splitlines()
    out = {}
    out.update(_gopher_quality(text, lines, ids, lengths, facts[is_word]))
    out.update(_gopher_repetition(text, ids, lengths))
    out.update(_c4(text, lines, offsets, facts, v))
    out.update(_fineweb(text, len(ids)))
    return out


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _duplicates(items: list[str]) -> tuple[int, int]:
    """datatrove's find_duplicates (items, and their characters, equal to an earlier item) from the
    distinct items instead of a Python loop: every occurrence after an item's first is a duplicate."""
    distinct = set(items)
    return len(items) - len(distinct), sum(map(len, items)) - sum(map(len, distinct))


def _gopher_quality(text: str, lines: list[str], ids: np.ndarray, lengths: np.ndarray, facts) -> dict:
    n_words = len(ids)
    non_symbol = facts[:, NON_SYMBOL]
    n_non_symbol = int(non_symbol.sum())
    return {
        "gopher_words": n_non_symbol,
        "gopher_avg_word_length": int(lengths[non_symbol].sum()) / n_non_symbol if n_non_symbol else None,
        "gopher_hash_ratio": _ratio(text.count("#"), n_words),
        "gopher_ellipsis_ratio": _ratio(text.count("...") + text.count("…"), n_words),
        "gopher_bullet_lines_ratio": _ratio(
            sum(map(str.startswith, map(str.lstrip, lines), repeat(("•", "-")))), len(lines)
        ),
        "gopher_end_ellipsis_lines_ratio": _ratio(
            sum(map(str.endswith, map(str.rstrip, lines), repeat(("...", "…")))), len(lines)
        ),
        "gopher_alpha_words_ratio": _ratio(int(facts[:, ALPHA].sum()), n_words),
        "gopher_stop_words": len(np.unique(ids[facts[:, STOP]])),  # distinct: an id stands for one string
    }


def _gopher_repetition(text: str, ids: np.ndarray, lengths: np.ndarray) -> dict:
    """datatrove's n-gram measures with numpy instead of a Python string per n-gram and n. Top n-grams:
    exact ids of the word sequences (np.unique). Repeated n-grams (words joined without spaces, so
    different words can give one string): a hash of each n-gram's characters; n-grams with one hash are
    one string when their words are the same, and compared as strings otherwise (a collision can merge,
    never split), so the values are datatrove's exactly."""
    if not text:
        return {c: None for c, _ in GOPHER_REPETITION_COLUMNS}
    paragraphs = _PARAGRAPHS.split(text.strip())
    para_dups, para_chars = _duplicates(paragraphs)
    lines = _LINES.split(text)
    line_dups, line_chars = _duplicates(lines)
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
    grams, size = ids, int(ids.max()) + 1
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
        where, cls = _repeats(key, ids, n, lambda p, n=n: joined[ends_list[p] : ends_list[p + n]])
        out[f"rep_dup_{n}_gram"] = _repeated_chars(where, cls, ends_list, n) / len(text)
    return out


def _repeats(keys: np.ndarray, ids: np.ndarray, n: int, exact) -> tuple[list[int], list[int]]:
    """Positions (ascending) whose key occurs more than once, and for each the first of those positions
    with the same n-gram string: its words are the same as the first's of its key (checked for all at
    once), or else `exact(position)` is equal."""
    order = np.argsort(keys, kind="stable")
    same = keys[order[1:]] == keys[order[:-1]]
    if not same.any():
        return [], []
    starts = np.concatenate([[True], ~same])  # a run of one key begins here (in sorted order)
    run = np.empty(len(keys), np.int64)
    run[order] = np.cumsum(starts) - 1  # each position's run
    cls = order[starts][run]  # the run's first position (stable sort: the lowest)
    a, b = order[:-1][same], order[1:][same]  # neighbours in one run
    dup = np.zeros(len(keys), bool)
    dup[a] = dup[b] = True
    where = np.flatnonzero(dup)
    span = np.arange(n)
    differ = (ids[a[:, None] + span] != ids[b[:, None] + span]).any(axis=1)
    if differ.any():  # one hash, other words: the same string only if its characters say so
        mixed = np.zeros(len(starts), bool)
        mixed[run[b[differ]]] = True
        first: dict = {}
        for p in where[mixed[run[where]]].tolist():
            cls[p] = first.setdefault((int(cls[p]), exact(p)), p)
    return where.tolist(), cls[where].tolist()


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


def _c4(text: str, lines: list[str], offsets: np.ndarray, facts: np.ndarray, v: Vocab) -> dict:
    """C4QualityFilter's line loop with its doc-level rules (lorem ipsum, '{') recorded instead of applied:
    the sentence count is what the filter counts when neither fires, which is all it needs otherwise.

    datatrove runs spaCy's sentencizer on each kept line; a line's tokens are the document's tokens
    between its offsets (a line break is always a whitespace token of its own, so no special case reaches
    across it), and the Sentencizer rule is counted for all kept lines at once (_sentences). Only lines
    whose last character can pass the end-punctuation rule are looked at in Python."""
    sentences, lorem_line, curly_line = 0, None, None
    spans: list[tuple[int, int]] = []  # character ranges of the kept lines counted from the document
    stripped = list(map(str.strip, lines))
    line_starts = None
    for i in compress(range(len(lines)), map(str.endswith, stripped, repeat(C4_LAST_CHARS))):
        line = stripped[i]
        if len(line) > C4_MAX_WORD_LENGTH and any(len(w) > C4_MAX_WORD_LENGTH for w in line.split()):
            continue
        cleaned = CITATION_REGEX.sub("", line) if "[" in line else line  # every citation has a "["
        if not cleaned.endswith(END_PUNCTUATION) or cleaned.endswith(ELLIPSIS):
            continue
        if len(line.split(None, C4_MIN_WORDS_PER_LINE - 1)) < C4_MIN_WORDS_PER_LINE:
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
        if cleaned != line:  # citations removed: the line's tokens changed, tokenize it alone
            ((_, words),) = v.tokens([cleaned])
            f = v.facts[words]
            sentences += _count_sentences(f[:, SENT_END].tolist(), f[:, PUNCT].tolist())
        else:
            if line_starts is None:
                line_starts = np.cumsum([0, *map(len, text.splitlines(keepends=True))]).tolist()
            start = line_starts[i] + len(lines[i]) - len(lines[i].lstrip())
            spans.append((start, start + len(line)))
    if spans:
        sentences += _sentences(offsets, facts, np.array(spans))
    return {"c4_sentences": sentences, "c4_lorem_line": lorem_line, "c4_curly_line": curly_line}


def _count_sentences(ends: list[bool], puncts: list[bool]) -> int:
    """spaCy's Sentencizer rule on a line's tokens (is a sentence-ending char, is punctuation): a sentence
    ends after a sentence-ending token at the next token that is not punctuation. Used for the rare C4
    line whose citations were cut out."""
    n, seen_end = 1, False
    for end, punct in zip(ends, puncts):
        if seen_end and not punct and not end:
            n += 1
            seen_end = False
        elif end:
            seen_end = True
    return n


def _sentences(offsets: np.ndarray, facts: np.ndarray, spans: np.ndarray) -> int:
    """Sentences spaCy's Sentencizer finds in each character span, summed: one per span plus one per
    token that is neither punctuation nor a sentence-ending char and whose last such-or-sentence-ending
    token before it in the span is sentence-ending (other punctuation is passed over)."""
    ends = facts[:, SENT_END]  # in the sentencizer's punct_chars
    wordlike = ~facts[:, PUNCT] & ~ends
    keep = np.flatnonzero(ends | wordlike)  # tokens the rule looks at, in order
    starts_here = np.zeros(len(keep), np.int64)
    starts_here[1:] = ends[keep[:-1]] & wordlike[keep[1:]]  # a new sentence at keep[k]
    csum = np.concatenate([[0], np.cumsum(starts_here)])
    first, stop = np.searchsorted(offsets, spans.T)  # token ranges of the spans
    lo, hi = np.searchsorted(keep, first), np.searchsorted(keep, stop)
    # transitions k with keep[k - 1] and keep[k] both in the span: lo < k < hi
    inside = np.where(hi > lo + 1, csum[hi] - csum[np.minimum(lo + 1, hi)], 0)
    return int(len(spans) + inside.sum())


def _fineweb(text: str, n_words: int) -> dict:
    split = text.split("\n")
    lines = list(compress(split, map(str.strip, split)))  # the lines with a non-whitespace character
    if not lines:
        return {c: None for c, _ in FINEWEB_COLUMNS}
    return {
        "fw_line_punct_ratio": sum(map(str.endswith, lines, repeat(FW_STOP_CHARS))) / len(lines),
        "fw_short_line_ratio": sum(map(FW_SHORT_LINE_LENGTH.__ge__, map(len, lines))) / len(lines),
        "fw_char_dup_ratio": _duplicates(lines)[1] / len(text.replace("\n", "")),
        "fw_list_ratio": text.count("\n") / n_words if n_words else float("inf"),
    }
