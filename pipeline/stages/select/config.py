"""Config of stage `select`: thresholds over annotate's signals, named as in datatrove's filters."""

from __future__ import annotations

from pydantic import Field, field_validator

from pipeline.section import Section
from pipeline.stages.annotate.config import DUP_N_GRAMS, TOP_N_GRAMS


class GopherQualityRules(Section):
    """Thresholds of datatrove's GopherQualityFilter (same names); null or 0 turns a rule off, as there."""

    min_doc_words: int | None = 50  # fewer words (with a non-punctuation character) -> gopher_short_doc
    max_doc_words: int | None = 100_000  # more -> gopher_long_doc
    min_avg_word_length: float | None = 3  # mean word length below -> gopher_below_avg_threshold
    max_avg_word_length: float | None = 10  # above -> gopher_above_avg_threshold
    # '#' or '...' per word above -> gopher_too_many_hashes/_ellipsis
    max_symbol_word_ratio: float | None = 0.1
    # share of lines starting with a bullet above -> gopher_too_many_bullets
    max_bullet_lines_ratio: float | None = 0.9
    # share of lines ending with '...' -> gopher_too_many_end_ellipsis
    max_ellipsis_lines_ratio: float | None = 0.3
    # share of words with a letter BELOW this -> gopher_below_alpha_threshold
    max_non_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2  # fewer distinct stop words -> gopher_enough_stop_words


class GopherRepetitionRules(Section):
    """Thresholds of datatrove's GopherRepetitionFilter; null or 0 turns a line/paragraph rule off."""

    dup_line_frac: float | None = 0.3  # share of duplicated lines above -> dup_line_frac
    dup_para_frac: float | None = 0.3  # share of duplicated paragraphs above -> dup_para_frac
    dup_line_char_frac: float | None = 0.2  # share of characters in duplicated lines -> dup_line_char_frac
    # share of characters in duplicated paragraphs -> dup_para_char_frac
    dup_para_char_frac: float | None = 0.2
    # n -> max char share of the top n-gram (n in 2..4)
    top_n_grams: dict[int, float] = {2: 0.2, 3: 0.18, 4: 0.16}
    # n -> max char share of repeated n-grams (n in 5..10)
    dup_n_grams: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )

    @field_validator("top_n_grams")
    @classmethod
    def _top_measured(cls, v: dict[int, float]) -> dict[int, float]:
        return _measured_ns(v, TOP_N_GRAMS)

    @field_validator("dup_n_grams")
    @classmethod
    def _dup_measured(cls, v: dict[int, float]) -> dict[int, float]:
        return _measured_ns(v, DUP_N_GRAMS)


def _measured_ns(v: dict[int, float], measured: tuple[int, ...]) -> dict[int, float]:
    bad = sorted(n for n in v if n not in measured)
    if bad:
        raise ValueError(f"annotate measures n in {list(measured)} only, got n = {bad}")
    return dict(sorted(v.items()))


class C4Rules(Section):
    """Document-level rules of datatrove's C4QualityFilter (its line rules are fixed at datatrove's
    defaults)."""

    filter_lorem_ipsum: bool = True  # a counted line with "lorem ipsum" -> lorem_ipsum
    filter_curly_bracket: bool = True  # a counted line with '{' -> curly_bracket
    # fewer sentences in the kept lines -> too_few_sentences (-1: off)
    min_num_sentences: int = Field(5, ge=-1)


class FineWebRules(Section):
    """Thresholds of datatrove's FineWebQualityFilter (same names)."""

    line_punct_thr: float = 0.12  # share of lines ending in terminal punctuation below -> line_punct_ratio
    line_punct_exclude_zero: bool = False  # true: a ratio of exactly 0 passes the rule above
    short_line_thr: float = 0.67  # share of lines of <= 30 chars above -> short_line_ratio
    char_duplicates_ratio: float = 0.01  # share of characters in duplicated lines above -> char_dup_ratio
    new_line_ratio: float = 0.3  # newlines per word above -> list_ratio


class SelectConfig(Section):
    lang: list[str] | None = ["en"]  # keep these languages (annotate's `lang`); null: any
    lang_score: float | None = Field(0.65, ge=0, le=1)  # minimum language-ID probability; null: off
    edu_score: float | None = None  # minimum edu_score (needs annotate.edu_model); null: off
    gopher_repetition: GopherRepetitionRules | None = GopherRepetitionRules()  # null: filter off
    gopher_quality: GopherQualityRules | None = GopherQualityRules()  # null: filter off
    c4_quality: C4Rules | None = C4Rules()  # null: filter off
    fineweb_quality: FineWebRules | None = FineWebRules()  # null: filter off
    # share of dropped docs whose text select/dropped/ keeps (all keep id, reason, signals)
    dropped_text_sample: float = Field(1.0, ge=0, le=1)
