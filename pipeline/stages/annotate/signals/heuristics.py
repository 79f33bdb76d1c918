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
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate

import numpy as np
from datatrove.pipeline.filters.c4_filters import CITATION_REGEX, ELLIPSIS, END_PUNCTUATION, POLICY_SUBSTRINGS
from datatrove.pipeline.filters.gopher_quality_filter import STOP_WORDS
from datatrove.pipeline.filters.gopher_repetition_filter import find_duplicates
from datatrove.utils.text import PUNCTUATION_SET, TERMINAL_PUNCTUATION
from spacy.attrs import IDX, IS_PUNCT, LENGTH

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


@lru_cache(maxsize=1)
def _tokenizer():
    """The tokenizer datatrove uses for English words (spacy.blank('en')); its sentencizer's punctuation."""
    import spacy
    from spacy.pipeline import Sentencizer

    return spacy.blank("en").tokenizer, frozenset(Sentencizer.default_punct_chars)


@dataclass
class Tokens:
    """The document's spaCy tokens: character offsets (sorted), texts, is_punct flags."""

    starts: np.ndarray
    texts: list[str]
    punct: list[bool]

    def between(self, start: int, end: int) -> list[tuple[str, bool]]:
        """(text, is_punct) of the tokens starting in [start, end)."""
        a, b = np.searchsorted(self.starts, [start, end]).tolist()
        return list(zip(self.texts[a:b], self.punct[a:b]))


def _count_sentences(tokens: list[tuple[str, bool]], punct_chars: frozenset) -> int:
    """spaCy's Sentencizer rule, replayed on tokens already made: a sentence ends after a token in
    `punct_chars` at the next token that is not punctuation. Written out so that C4's per-line sentence
    count needs no second spaCy pass over each line (what makes datatrove's C4 filter slow)."""
    n, seen_period = 1, False
    for text, is_punct in tokens:
        in_punct_chars = text in punct_chars
        if seen_period and not is_punct and not in_punct_chars:
            n += 1
            seen_period = False
        elif in_punct_chars:
            seen_period = True
    return n


def measure(text: str) -> dict:
    """All heuristic values of one document (see HEURISTIC_COLUMNS)."""
    tokenizer, punct_chars = _tokenizer()
    # Offsets and flags as arrays, texts sliced in C: cheaper than a Python Token object per token.
    spans = tokenizer(text).to_array([IDX, LENGTH, IS_PUNCT])
    starts = spans[:, 0]
    texts = list(map(text.__getitem__, map(slice, starts.tolist(), (starts + spans[:, 1]).tolist())))
    tokens = Tokens(starts, texts, spans[:, 2].astype(bool).tolist())
    words = [w for w in map(str.strip, texts) if w]
    out = {}
    out.update(_gopher_quality(text, words))
    out.update(_gopher_repetition(text, words))
    out.update(_c4(text, tokens, tokenizer, punct_chars))
    out.update(_fineweb(text, words))
    return out


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _gopher_quality(text: str, words: list[str]) -> dict:
    n_words = len(words)
    # w.isalpha() first: a C-speed yes for most words (no letter is in PUNCTUATION_SET), the exact test
    # otherwise
    non_symbol = [w for w in words if w.isalpha() or any(ch not in PUNCTUATION_SET for ch in w)]
    lines = text.splitlines()
    return {
        "gopher_words": len(non_symbol),
        "gopher_avg_word_length": sum(len(w) for w in non_symbol) / len(non_symbol) if non_symbol else None,
        "gopher_hash_ratio": _ratio(text.count("#"), n_words),
        "gopher_ellipsis_ratio": _ratio(text.count("...") + text.count("…"), n_words),
        "gopher_bullet_lines_ratio": _ratio(
            sum(s.lstrip().startswith("•") or s.lstrip().startswith("-") for s in lines), len(lines)
        ),
        "gopher_end_ellipsis_lines_ratio": _ratio(
            sum(s.rstrip().endswith("...") or s.rstrip().endswith("…") for s in lines), len(lines)
        ),
        "gopher_alpha_words_ratio": _ratio(
            sum(w.isalpha() or any(c.isalpha() for c in w) for w in words), n_words
        ),
        "gopher_stop_words": len(STOP_WORD_SET.intersection(words)),
    }


def _gopher_repetition(text: str, words: list[str]) -> dict:
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
    # datatrove's get_n_grams / find_top_duplicate / find_all_duplicate, with each n-gram cut out of one
    # joined
    # string instead of joined from a list slice per position and n: the same strings, several times faster.
    starts = [0, *accumulate(map(len, words))]  # offsets of the words in "".join(words)
    joined = "".join(words)
    spaced = " ".join(words)  # word i starts at starts[i] + i there
    for n in TOP_N_GRAMS:
        if len(words) < n:
            out[f"rep_top_{n}_gram"] = 0.0
            continue
        counts = Counter(spaced[starts[i] + i : starts[i + n] + i + n - 1] for i in range(len(words) - n + 1))
        top, freq = counts.most_common(1)[0]
        out[f"rep_top_{n}_gram"] = len(top) * freq / len(text)
    for n in DUP_N_GRAMS:
        out[f"rep_dup_{n}_gram"] = _repeated_chars(joined, starts, n) / len(text)
    return out


def _repeated_chars(joined: str, starts: list[int], n: int) -> int:
    """datatrove's find_all_duplicate: characters in n-grams (words joined without spaces) seen before,
    skipping n words after each repeat."""
    unique: set[str] = set()
    repeated, idx, last = 0, 0, len(starts) - 1 - n
    while idx <= last:
        gram = joined[starts[idx] : starts[idx + n]]
        if gram in unique:
            repeated += len(gram)
            idx += n
        else:
            unique.add(gram)
            idx += 1
    return repeated


def _c4(text: str, tokens: Tokens, tokenizer, punct_chars: frozenset) -> dict:
    """C4QualityFilter's line loop with its doc-level rules (lorem ipsum, '{') recorded instead of applied:
    the sentence count is what the filter counts when neither fires, which is all it needs otherwise."""
    sentences, lorem_line, curly_line = 0, None, None
    pos = 0  # character offset of the current line
    for i, (line, with_end) in enumerate(zip(text.splitlines(), text.splitlines(keepends=True))):
        start = pos + len(line) - len(line.lstrip())
        pos += len(with_end)
        stripped = line.strip()
        words = stripped.split()
        if any(len(w) > C4_MAX_WORD_LENGTH for w in words):
            continue
        cleaned = CITATION_REGEX.sub("", stripped)
        if not cleaned.endswith(END_PUNCTUATION) or cleaned.endswith(ELLIPSIS):
            continue
        if len(words) < C4_MIN_WORDS_PER_LINE:
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
            line_tokens = [(tok.text, tok.is_punct) for tok in tokenizer(cleaned)]
        else:  # spaCy tokenizes between whitespace independently, so the document's tokens of this line serve
            line_tokens = tokens.between(start, start + len(stripped))
        sentences += _count_sentences(line_tokens, punct_chars)
    return {"c4_sentences": sentences, "c4_lorem_line": lorem_line, "c4_curly_line": curly_line}


def _fineweb(text: str, words: list[str]) -> dict:
    lines = [line for line in text.split("\n") if line.strip() != ""]
    if not lines:
        return {c: None for c, _ in FINEWEB_COLUMNS}
    return {
        "fw_line_punct_ratio": sum(1 for line in lines if line.endswith(FW_STOP_CHARS)) / len(lines),
        "fw_short_line_ratio": sum(1 for line in lines if len(line) <= FW_SHORT_LINE_LENGTH) / len(lines),
        "fw_char_dup_ratio": find_duplicates(lines)[1] / len(text.replace("\n", "")),
        "fw_list_ratio": text.count("\n") / len(words) if words else float("inf"),
    }
