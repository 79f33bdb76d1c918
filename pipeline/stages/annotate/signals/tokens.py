"""spaCy's English tokens (spacy.blank("en"), what datatrove's filters split words with) of a batch of
documents, with every distinct piece of text tokenized once per process instead of once per occurrence.

datatrove tokenizes inside a spaCy memory zone, where spaCy caches nothing, so each filter sends every
piece of every document through the affix rules again. spaCy's tokenizer works piece by piece: a text is
cut into runs of whitespace and runs of non-whitespace (one space after a non-whitespace run is absorbed
by the token before it), and each run is tokenized on its own. A document's tokens are therefore the
concatenation of its pieces' tokens, except where spaCy's special-case matcher, which runs over the whole
document, finds a pattern across two pieces: such a match can only hide a special case inside a piece.
Where one may occur (two adjacent tokens of a pattern across a space, or next to a piece that the matcher
changed, whose tokens before the matcher are not known here), those pieces are tokenized again by spaCy
together. tests/test_signals.py compares the tokens with a fresh spaCy.
"""

from __future__ import annotations

import re
from itertools import chain

import numpy as np
from datatrove.pipeline.filters.gopher_quality_filter import STOP_WORDS
from datatrove.utils.text import PUNCTUATION_SET
from spacy.attrs import IDX, IS_PUNCT, IS_SPACE, LENGTH

_PIECES = re.compile(r"(\s+)")  # \s and spaCy's str.isspace are both Py_UNICODE_ISSPACE
# see Vocab._simple: (opening mark, Latin letters or digits, closing mark)
_SIMPLE = re.compile(
    r'([(\[“"]?)([A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f]+|[0-9]+)([,;:!?)\]”"]?|(?<=[a-z0-9])\.)\Z'
)
_LEAD = "\0"  # key prefix of a document's leading whitespace (no token before it absorbs a space)
_MAX_PIECES = 500_000  # distinct pieces remembered; past this all is forgotten (memory stays bounded)
STOP_WORD_SET = frozenset(STOP_WORDS)

# columns of Vocab.facts, one row per distinct token text
NON_SYMBOL, ALPHA, STOP, SENT_END, PUNCT, SPACE, PAIR_LEFT, PAIR_RIGHT = range(8)


class Vocab:
    """Per process: the tokens of every piece met so far, and facts about each distinct token text."""

    def __init__(self):
        import spacy
        from spacy.pipeline import Sentencizer

        self.tokenizer = spacy.blank("en").tokenizer
        getters = self.tokenizer.vocab.lex_attr_getters
        self._is_punct, self._is_space = getters[IS_PUNCT], getters[IS_SPACE]
        # No lexeme attributes (shape, like_url, ...): their getters were most of spaCy's cost for an unseen
        # word, and the facts needed here are computed once per distinct word below.
        self.tokenizer.vocab.lex_attr_getters = {}
        self.punct_chars = frozenset(Sentencizer.default_punct_chars)
        self._patterns, self._results = _special_patterns(self.tokenizer)
        self._specials = frozenset(self.tokenizer.rules)
        self._lefts = {a for a, _ in self._patterns}
        self._rights = {b for _, b in self._patterns}
        self.reset()

    def reset(self) -> None:
        self.pieces: dict[str, tuple[int, ...]] = {"": ()}  # piece -> token type ids
        # (offset in piece, word id, piece changed by the matcher) -> token type id
        self._types: dict[tuple[int, int, int], int] = {}
        self._new_types: list[tuple[int, int, int]] = []
        self.word_ids: dict[str, int] = {}
        self.words: list[str] = []
        self._new_facts: list[tuple] = []
        self.type_offset = np.zeros(0, np.int64)
        self.type_word = np.zeros(0, np.int64)
        self.type_changed = np.zeros(0, bool)
        self.length = np.zeros(0, np.int64)  # per word id
        self.facts = np.zeros((0, 8), bool)  # per word id

    def tokens(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(character offsets, word ids) of each text's tokens, as spaCy makes them."""
        keys = [_keys(_PIECES.split(t)) for t in texts]
        new = set().union(*(k for _, k in keys)).difference(self.pieces)  # set - dict: no copy of the keys
        if new:
            self._add_pieces(new)
        return [self._doc(text, parts, k) for text, (parts, k) in zip(texts, keys)]

    def forget_if_full(self) -> None:
        """Between batches: start again once the remembered pieces reach _MAX_PIECES."""
        if len(self.pieces) > _MAX_PIECES:
            self.reset()

    def _doc(self, text: str, parts: list[str], keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        entries = list(map(self.pieces.__getitem__, keys))
        types = np.fromiter(chain.from_iterable(entries), np.int64)
        counts = np.fromiter(map(len, entries), np.int64, len(entries))
        lengths = np.fromiter(map(len, parts), np.int64, len(parts))
        starts = np.cumsum(lengths) - lengths
        piece = np.repeat(np.arange(len(parts)), counts)
        offsets = starts[piece] + self.type_offset[types]
        words = self.type_word[types]
        # Adjacent tokens of different pieces have only a space between them: a pattern can cross there.
        f, changed = self.facts[words], self.type_changed[types]
        cand = np.flatnonzero(
            (piece[1:] != piece[:-1])
            & (f[:-1, PAIR_LEFT] | changed[:-1])
            & (f[1:, PAIR_RIGHT] | changed[1:])
            & ~f[:-1, SPACE]
            & ~f[1:, SPACE]
        )
        if len(cand):
            ids, strings, flags = words.tolist(), self.words, changed.tolist()
            crossing = self._crossing(lambda i: strings[ids[i]], flags.__getitem__, cand.tolist())
            if crossing:
                return self._retokenized(text, offsets, words, piece, starts + lengths, starts, crossing)
        return offsets, words

    def _crossing(self, text_at, changed_at, boundaries: list[int]) -> list[tuple[int, int]]:
        """Token ranges [start, stop) where a special-case pattern may match across one of the boundaries
        (a boundary k lies between token k and token k + 1); text_at(i) is token i's text, changed_at(i)
        whether its piece was changed by the matcher (then the range is the two tokens, to be safe)."""
        found = []
        for k in boundaries:
            if changed_at(k) or changed_at(k + 1):
                found.append((k, k + 2))
                continue
            for j, pattern in self._patterns.get((text_at(k), text_at(k + 1)), ()):
                lo = k - j
                if lo >= 0:
                    try:
                        at = range(lo, lo + len(pattern))
                        if tuple(map(text_at, at)) == pattern or any(map(changed_at, at)):
                            found.append((lo, lo + len(pattern)))
                    except IndexError:  # the pattern runs past the last token
                        pass
        return found

    def _retokenized(
        self, text, offsets, words, piece, ends, starts, crossing
    ) -> tuple[np.ndarray, np.ndarray]:
        """The tokens with each run of pieces that a pattern crosses tokenized again by spaCy as one text:
        only matches inside that run can interact with the crossing one."""
        runs: list[list[int]] = []  # [first piece, last piece] of each run, merged where they share a piece
        for lo, hi in sorted(crossing):
            first, last = int(piece[lo]), int(piece[hi - 1])
            if runs and first <= runs[-1][1]:
                runs[-1][1] = max(runs[-1][1], last)
            else:
                runs.append([first, last])
        # all runs in one spaCy call, a line break between them: no pattern holds a whitespace token
        bounds = [(int(starts[first]), int(ends[last])) for first, last in runs]
        got_offsets, got_words = self._spacy("\n".join(text[lo:hi] for lo, hi in bounds))
        shift = np.cumsum([0] + [hi - lo + 1 for lo, hi in bounds])  # where each run starts in the call
        which = np.searchsorted(shift, got_offsets, side="right") - 1
        sizes = np.array([hi - lo for lo, hi in bounds])
        keep = got_offsets < shift[which] + sizes[which]  # not the line breaks' own tokens
        out_offsets, out_words, at = [], [], 0
        for r, (first, last) in enumerate(runs):
            lo, hi = np.searchsorted(piece, [first, last + 1])
            mine = keep & (which == r)
            out_offsets += [offsets[at:lo], got_offsets[mine] - shift[r] + bounds[r][0]]
            out_words += [words[at:lo], got_words[mine]]
            at = hi
        out_offsets.append(offsets[at:])
        out_words.append(words[at:])
        return np.concatenate(out_offsets), np.concatenate(out_words)

    def _spacy(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """spaCy's tokens of `text` as one document."""
        with self.tokenizer.vocab.memory_zone():
            got = [(t.idx, self._word(t.text)) for t in self.tokenizer(text)]
        self._flush()
        arr = np.array(got, np.int64).reshape(-1, 2)
        return arr[:, 0], arr[:, 1]

    def _add_pieces(self, new: set[str]) -> None:
        plain = [p for p in new if not p[0].isspace() and p[0] != _LEAD]
        with self.tokenizer.vocab.memory_zone():  # spaCy's own vocab does not grow with the corpus
            for piece, toks in zip(plain, self._tokenize_plain(plain)):
                changed = self._maybe_changed([t for _, t in toks])
                self.pieces[piece] = tuple(self._type(o, t, changed) for o, t in toks)
            for key in new.difference(plain):  # whitespace: few distinct, each on its own
                lead = key[0] == _LEAD
                ws = key[1:] if lead else key
                skip = 0 if lead or ws[0] != " " else 1  # the space absorbed by the token before
                toks = [(t.idx + skip, t.text) for t in self.tokenizer(ws[skip:])] if ws[skip:] else []
                self.pieces[key] = tuple(self._type(o, t, False) for o, t in toks)
        self._flush()

    def _tokenize_plain(self, plain: list[str]) -> list[list[tuple[int, str]]]:
        """(offset, text) of the tokens of each non-whitespace piece: the simple ones from spaCy's rules
        (_simple), the others in one spaCy call, a line break between them (a token of its own, in no
        special-case pattern: each piece as if alone)."""
        out: list[list[tuple[int, str]]] = [[] for _ in plain]
        hard = []
        for i, piece in enumerate(plain):
            toks = self._simple(piece)
            if toks is None:
                hard.append(i)
            else:
                out[i] = toks
        if not hard:
            return out
        pieces = [plain[i] for i in hard]
        arr = self.tokenizer("\n".join(pieces)).to_array([IDX, LENGTH]).astype(np.int64).reshape(-1, 2)
        lens = np.fromiter(map(len, pieces), np.int64, len(pieces))
        starts = np.cumsum(lens + 1) - (lens + 1)
        which = np.searchsorted(starts, arr[:, 0], side="right") - 1
        rel = arr[:, 0] - starts[which]
        for p, o, n in zip(which.tolist(), rel.tolist(), arr[:, 1].tolist()):
            if o < len(pieces[p]):  # not the line break
                out[hard[p]].append((o, pieces[p][o : o + n]))
        return out

    def _simple(self, piece: str) -> list[tuple[int, str]] | None:
        """The tokens of a piece whose tokenization follows from spaCy's English rules without running them,
        else None. Written by hand because spaCy has no cheaper path, and two thirds of a web corpus's
        distinct pieces are such: a run of Latin letters or of digits (no prefix, suffix or infix pattern
        matches inside one), with at most one opening mark before it and one closing mark after it (each
        an unconditional prefix or suffix; a full stop is a suffix after a lowercase letter or a digit). A
        piece where a special case could apply (any of its affix-stripped forms, or two adjacent tokens
        of a special case's pattern) goes to spaCy; tests/test_signals.py compares with spaCy itself."""
        m = _SIMPLE.match(piece)
        if m is None:
            return None
        pre, core, suf = m.groups()
        specials = self._specials
        if core in specials or piece in specials:
            return None
        toks = [(len(pre), core)]
        if pre:
            if pre in specials or pre + core in specials or (pre, core) in self._patterns:
                return None
            toks.insert(0, (0, pre))
        if suf:
            if suf in specials or core + suf in specials or (core, suf) in self._patterns:
                return None
            toks.append((len(pre) + len(core), suf))
        return toks

    def _maybe_changed(self, texts: list[str]) -> bool:
        """Whether spaCy's special-case matcher may have changed a piece with these tokens: they hold the
        tokens of a special case that its affix rules alone would split otherwise."""
        for i, t in enumerate(texts):
            for result in self._results.get(t, ()):
                if tuple(texts[i : i + len(result)]) == result:
                    return True
        return False

    def _type(self, offset: int, text: str, changed: bool) -> int:
        key = (offset, self._word(text), changed)
        tid = self._types.get(key)
        if tid is None:
            tid = self._types[key] = len(self._types)
            self._new_types.append(key)
        return tid

    def _word(self, text: str) -> int:
        wid = self.word_ids.get(text)
        if wid is None:
            wid = self.word_ids[text] = len(self.words)
            self.words.append(text)
            self._new_facts.append(
                (
                    len(text),
                    any(ch not in PUNCTUATION_SET for ch in text),
                    any(c.isalpha() for c in text),
                    text in STOP_WORD_SET,
                    text in self.punct_chars,
                    self._is_punct(text),
                    self._is_space(text),
                    text in self._lefts,
                    text in self._rights,
                )
            )
        return wid

    def _flush(self) -> None:
        """Append the types and words added since the last flush to the arrays."""
        if self._new_types:
            t = np.array(self._new_types, np.int64).reshape(-1, 3)
            self.type_offset = np.concatenate([self.type_offset, t[:, 0]])
            self.type_word = np.concatenate([self.type_word, t[:, 1]])
            self.type_changed = np.concatenate([self.type_changed, t[:, 2].astype(bool)])
            self._new_types = []
        if self._new_facts:
            f = np.array(self._new_facts, np.int64).reshape(-1, 9)
            self.length = np.concatenate([self.length, f[:, 0]])
            self.facts = np.concatenate([self.facts, f[:, 1:].astype(bool)])
            self._new_facts = []


def _keys(parts: list[str]) -> tuple[list[str], list[str]]:
    """A text's pieces (re.split with the separators kept) and their keys in Vocab.pieces."""
    if len(parts) > 1 and parts[0] == "":
        keys = parts.copy()
        keys[1] = _LEAD + parts[1]
        return parts, keys
    return parts, parts


def _special_patterns(tokenizer) -> tuple[dict, dict]:
    """spaCy's special-case patterns (each special case as the affix rules alone split it: what the
    tokenizer's matcher looks for; all special cases, a superset of those it matches) by each pair of
    adjacent token texts in them, with the pair's position; and the tokens of each special case that a
    match changes, by their first token."""
    from spacy.attrs import ORTH
    from spacy.tokenizer import Tokenizer

    bare = Tokenizer(
        tokenizer.vocab,
        rules={},
        prefix_search=tokenizer.prefix_search,
        suffix_search=tokenizer.suffix_search,
        infix_finditer=tokenizer.infix_finditer,
        token_match=tokenizer.token_match,
        url_match=tokenizer.url_match,
    )
    patterns: dict = {}
    results: dict = {}
    for special, substrings in tokenizer.rules.items():
        texts = tuple(t.text for t in bare(special))
        for j in range(len(texts) - 1):
            patterns.setdefault(texts[j : j + 2], []).append((j, texts))
        result = tuple(s[ORTH] for s in substrings)
        if result != texts:
            results.setdefault(result[0], []).append(result)
    return patterns, results
