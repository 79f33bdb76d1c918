"""Signals: measured values turned into verdicts must equal datatrove's own filters (the oracle)."""

from __future__ import annotations

import io
import json
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor

import pyarrow as pa
import pytest
import zstandard
from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.c4_filters import CITATION_REGEX, POLICY_SUBSTRINGS

from pipeline.stages.annotate.signals import annotate_table
from pipeline.stages.annotate.signals.heuristics import HEURISTIC_COLUMNS, measure, measure_batch
from pipeline.stages.select import rules
from pipeline.stages.select.config import (
    C4Rules,
    FineWebRules,
    GopherQualityRules,
    GopherRepetitionRules,
    SelectConfig,
)
from tests.conftest import DATA

GOOD = (
    "The water cycle describes how water moves between the oceans, the air and the land. "
    "Heat from the sun makes water evaporate from the surface of the sea. "
    "As the warm, moist air rises, it cools and the vapour condenses into tiny droplets that form clouds.\n"
    "When the droplets grow heavy enough, they fall to the ground as rain or snow. "
    "Some of that water flows over the land into rivers and lakes, and some of it soaks into the soil, "
    "where plants take it up through their roots. Rivers carry the rest back to the sea, and the cycle "
    "begins again.\n"
    "Because the cycle is driven by the energy of the sun, it never stops. It shapes our weather, "
    "fills the reservoirs that we drink from and carves valleys over thousands of years."
)
REPETITIVE = "\n".join(
    ["Buy cheap watches online today, best prices guaranteed for all of our customers."] * 30
)
FRENCH = (
    "Le cycle de l'eau décrit la façon dont l'eau circule entre les océans, l'atmosphère et les continents. "
    "La chaleur du soleil fait s'évaporer l'eau à la surface de la mer. En montant, l'air chaud et humide "
    "se refroidit et la vapeur se condense en fines gouttelettes qui forment les nuages. Quand les gouttes "
    "deviennent assez lourdes, elles tombent sous forme de pluie ou de neige."
)
BOILERPLATE = "\n".join(  # a navigation menu: every line a bullet, no sentence
    f"- {item}"
    for item in [
        "Home page overview",
        "About our company",
        "Latest product releases",
        "Contact the team",
        "Login or register",
        "Shopping cart contents",
        "Company blog posts",
        "Open career positions",
        "Press and media",
        "Customer support desk",
        "Privacy policy details",
        "Terms of service",
        "Full sitemap index",
        "Weekly newsletter signup",
        "Gift cards available",
        "Find store locations",
        "Returns and refunds",
        "Shipping rates worldwide",
        "Help center articles",
        "Accessibility statement here",
    ]
)
SHORT = "Click here to subscribe to our newsletter."

ORACLES = {
    "gopher_quality": (GopherQualityFilter, GopherQualityRules),
    "gopher_repetition": (GopherRepetitionFilter, GopherRepetitionRules),
    "c4_quality": (C4QualityFilter, C4Rules),
    "fineweb_quality": (FineWebQualityFilter, FineWebRules),
}


def _signal_table(texts: list[str]) -> pa.Table:
    """Values measured in batches of 64, as the Annotator does."""
    cols = {n: [] for n, _ in HEURISTIC_COLUMNS}
    for i in range(0, len(texts), 64):
        for n, v in measure_batch(texts[i : i + 64]).items():
            cols[n] += v
    return pa.table({n: pa.array(cols[n], pa.type_for_alias(k)) for n, k in HEURISTIC_COLUMNS})


def _datatrove_reasons(name: str, texts: list[str], params: dict) -> list[str | None]:
    out = []
    for i, text in enumerate(texts):
        f = ORACLES[name][0](**params)  # C4 rewrites doc.text: a fresh document per filter
        v = f.filter(Document(text=text, id=str(i)))
        out.append(None if v is True else f"{name}:{v[1]}")
    return out


def _assert_same_verdicts(texts: list[str], params: dict[str, dict], processes: int = 0) -> dict[str, list]:
    """Our verdicts against datatrove's filters; with `processes`, datatrove's run in that many spawned
    processes (a few thousand documents take minutes through its four filters) while ours are measured."""
    dt_params = {name: dict(params.get(name, {})) for name in ORACLES}
    for p in dt_params.values():
        for key in ("top_n_grams", "dup_n_grams"):  # datatrove takes these as ((n, frac), ...)
            if key in p:
                p[key] = tuple(sorted(p[key].items()))
    pool = ProcessPoolExecutor(processes, mp_context=mp.get_context("spawn")) if processes else None
    if pool:
        step = -(-len(texts) // processes)
        futures = {
            name: [
                pool.submit(_datatrove_reasons, name, texts[i : i + step], dt_params[name])
                for i in range(0, len(texts), step)
            ]
            for name in ORACLES
        }
    try:
        table = _signal_table(texts)
        got = {}
        for name, (_, section) in ORACLES.items():
            ours = rules.evaluate(table, rules.heuristic_rules(name, section(**params.get(name, {}))))
            ours = ours[0].to_pylist()
            if pool:
                theirs = [v for f in futures[name] for v in f.result()]
            else:
                theirs = _datatrove_reasons(name, texts, dt_params[name])
            diff = [(i, o, t) for i, (o, t) in enumerate(zip(ours, theirs)) if o != t]
            assert len(theirs) == len(ours) and not diff, (
                f"{name}: {len(diff)} verdicts differ from datatrove, e.g. {diff[:3]}"
            )
            got[name] = ours
        return got
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)


def _onestopenglish(n: int) -> list[str]:
    with open(DATA / "demo" / "onestopenglish.jsonl.zst", "rb") as f:
        lines = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8")
        return [json.loads(next(lines))["text"] for _ in range(n)]


def test_crafted_documents_get_the_expected_verdicts():
    texts = [GOOD, REPETITIVE, FRENCH, BOILERPLATE, SHORT]
    v = _assert_same_verdicts(texts, {})
    good, rep, _, boiler, short = range(5)
    assert all(v[f][good] is None for f in ORACLES), v
    assert v["gopher_repetition"][rep] == "gopher_repetition:dup_line_frac"
    assert v["fineweb_quality"][rep] == "fineweb_quality:char_dup_ratio"
    assert v["gopher_repetition"][boiler] is None
    assert v["gopher_quality"][boiler] == "gopher_quality:gopher_too_many_bullets"
    assert v["c4_quality"][boiler] == "c4_quality:too_few_sentences"
    assert v["fineweb_quality"][boiler] == "fineweb_quality:line_punct_ratio"
    assert v["gopher_quality"][short] == "gopher_quality:gopher_short_doc"
    assert v["c4_quality"][short] == "c4_quality:too_few_sentences"


def test_french_page_is_identified_and_dropped_by_lang():
    table = annotate_table(pa.table({"id": ["g", "f"], "text": [GOOD, FRENCH]}))
    assert table["lang"].to_pylist() == ["en", "fr"]
    assert min(table["lang_score"].to_pylist()) > 0.8
    reason, detail = rules.first_failure(table, SelectConfig())
    assert reason.to_pylist() == [None, "lang"]
    assert detail.to_pylist()[1] == "lang=fr not in ['en']"


def test_c4_doc_rules_and_citations_match_datatrove():
    sentence = "This line is a full sentence that ends well."
    texts = [
        "\n".join(
            [sentence] * 3
            + ["Lorem ipsum dolor sit amet, consectetur adipiscing."]
            + ["int f() { return 1; }."]
        ),
        "\n".join(
            [sentence] * 3 + ["Call f() { x } now please."] + ["Lorem ipsum dolor sit amet, again here."]
        ),
        "\n".join([sentence] * 3 + ["Enable javascript { please } to continue."] * 2 + [sentence] * 2),
        "\n".join([f"Dr. Smith said so.[{i}] Then he left. Fine [citation needed]." for i in range(3)]),
        "  Leading space.  Two spaces. Tab\there.  \n\u2028Also a line with three words.\r\nWindows ending "
        "here ok.",
    ]
    for params in (
        {},
        {"filter_lorem_ipsum": False},
        {"filter_curly_bracket": False},
        {"min_num_sentences": 3},
    ):
        _assert_same_verdicts(texts, {"c4_quality": params})


def test_non_default_thresholds_match_datatrove():
    texts = [GOOD, REPETITIVE, BOILERPLATE, SHORT] + _onestopenglish(30)
    _assert_same_verdicts(
        texts,
        {
            "gopher_quality": {
                "min_doc_words": 200,
                "max_avg_word_length": 5.2,
                "min_stop_words": 0,
                "max_non_alpha_words_ratio": 0.9,
            },
            "gopher_repetition": {
                "dup_line_frac": None,
                "top_n_grams": {2: 0.02},
                "dup_n_grams": {5: 0.01, 9: 0.001},
            },
            "c4_quality": {"min_num_sentences": 30},
            "fineweb_quality": {
                "line_punct_thr": 0.9,
                "line_punct_exclude_zero": True,
                "new_line_ratio": 0.02,
            },
        },
    )


def test_real_articles_match_datatrove_with_defaults():
    _assert_same_verdicts(_onestopenglish(60), {})


def test_n_grams_annotate_does_not_measure_are_a_config_error():
    with pytest.raises(ValueError, match="annotate measures n in"):
        GopherRepetitionRules(top_n_grams={7: 0.1})


@pytest.mark.slow
def test_demo_corpus_matches_datatrove(ray_local, write_config):
    """Every document of the demo corpus, through the real ingest stage."""
    from pipeline.config import load_config
    from pipeline.runner import read_docs, run_pipeline

    cfg = load_config(write_config({"ingest": _demo_ingest_section()}))
    run_pipeline(cfg, stages=["ingest"], log=lambda m: None)
    texts = read_docs(cfg.run.output, "ingest").select_columns(["text"]).to_pandas()["text"].tolist()
    assert len(texts) > 1000
    _assert_same_verdicts(texts, {}, processes=2)


def _demo_ingest_section() -> dict:
    import yaml

    return yaml.safe_load(open("configs/demo.yaml"))["ingest"]


# Texts where shortcuts in the measuring would show: words that join into the same string ("ab c" and
# "a bc" are one 2-word string without spaces), tied top n-grams of different lengths, spaCy special
# cases next to each other ("):" after "(n", emoticons), runs of whitespace inside C4 lines, a sentence
# end followed by whitespace and punctuation.
TRICKY = [
    " ".join(["ab c d e f", "a bc d e f"] * 6 + ["x y z"] * 3),
    "one two one two three four three four five six five six. " * 3 + "seven eight seven eight.",
    "@cache def factorial(n): return n * factorial(n-1) if n else 1 :) (: ): :( it's Mr. Smith's\n"
    "Call f() { x } now please.  See it .  . Done here, ok.\tTab here, fine.\n"
    "Hi.  There is  a gap.  (Really.) Yes \u00a0it is. Okay :-) fine it 's o.O here.\n" * 2,
    "\n\n  Leading lines.  And e.g. i.e. a.m. ok it's done.\n\n\nSame line.\nSame line.\nSame line.\n",
]


def test_values_equal_datatrove_functions_on_tricky_text():
    from datatrove.pipeline.filters.gopher_repetition_filter import (
        find_all_duplicate,
        find_top_duplicate,
        get_n_grams,
    )
    from datatrove.utils.text import split_into_sentences, split_into_words

    for text in TRICKY + _onestopenglish(5):
        got = measure(text)
        words = split_into_words(text)
        for n in (2, 3, 4):
            grams = get_n_grams(words, n)
            want = find_top_duplicate(grams) / len(text) if grams else 0.0
            assert got[f"rep_top_{n}_gram"] == want, (n, text[:60])
        for n in (5, 6, 7, 8, 9, 10):
            assert got[f"rep_dup_{n}_gram"] == find_all_duplicate(words, n) / len(text), (n, text[:60])
        assert got["gopher_alpha_words_ratio"] == sum(any(c.isalpha() for c in w) for w in words) / len(words)
        kept_lines = []  # C4's kept lines, when no doc-level rule fires
        for line in text.splitlines():
            line = line.strip()
            cut = CITATION_REGEX.sub("", line)
            if len(line.split()) >= 3 and cut.endswith((".", "?", "!", '"', "'")) and not cut.endswith("..."):
                if "javascript" not in cut.lower() and not any(p in cut.lower() for p in POLICY_SUBSTRINGS):
                    kept_lines.append(cut)
        assert got["c4_sentences"] == sum(len(split_into_sentences(line)) for line in kept_lines), text[:60]


def test_tokens_equal_a_fresh_spacy_across_batches():
    """Tokens are assembled from pieces tokenized once per process (in batches, in any order); a document
    must still get exactly the tokens of a fresh spacy.blank('en') on the whole text, also where a
    special-case pattern crosses a space (": p." and "try: p.x" below, as in the demo's Python docs)."""
    import spacy

    from pipeline.stages.annotate.signals.heuristics import vocab

    fresh = spacy.blank("en").tokenizer
    v = vocab()
    crossing = [
        "try: p.Parse(doc) except",
        "style (%d-date %f-format): ')\nEnter",
        "Default: (integers) ok :p x :-) ( : ) it's Mr. Smith's (:",
        " \n lead  and trail \n",
    ]
    texts = TRICKY + crossing + _onestopenglish(3) + TRICKY[::-1] + crossing[::-1]
    for batch in (texts[:5], texts[5:], texts):
        for text, (offsets, words) in zip(batch, v.tokens(batch)):
            got = list(zip(offsets.tolist(), [v.words[w] for w in words.tolist()]))
            assert got == [(t.idx, t.text) for t in fresh(text)], text[:60]


def test_simple_pieces_are_tokenized_as_spacy_does():
    """Pieces tokenized without spaCy (Vocab._simple: letters or digits, one opening and one closing mark)
    must get spaCy's own tokens, also where the letters are a special case ("cannot", "Mr", "gonna") or a
    mark joins them into one ("etc.", "e.g.", emoticons); and the shortcut must take a fair share of a real
    text's pieces (else it has stopped working and the speed goes with it)."""
    import spacy

    from pipeline.stages.annotate.signals.tokens import _PIECES, Vocab

    fresh = spacy.blank("en").tokenizer
    v = Vocab()
    cores = ["word", "Word", "WORD", "a", "A", "s", "nt", "ll", "Straße", "Längen", "é", "2024", "0", "x9"]
    cores += [c for c in fresh.rules if c.isalnum()] + [c[:-1] for c in fresh.rules if c[-1:] in ".,)"]
    opens = ["", "(", "[", "“", '"', "'", "‘", "((", "$", ":"]
    closes = ["", ",", ";", ":", "!", "?", ")", "]", "”", '"', ".", "'", "..", ").", "%", "s", "'s", "p", "-"]
    taken = 0
    for piece in {o + c + s for c in cores for o in opens for s in closes}:
        got = v._simple(piece)
        if got is not None:
            taken += 1
            assert got == [(t.idx, t.text) for t in fresh(piece)], piece
    assert taken > 1000
    pieces = {p for t in _onestopenglish(20) for p in _PIECES.split(t) if p.strip()}
    assert sum(v._simple(p) is not None for p in pieces) > 0.6 * len(pieces)
