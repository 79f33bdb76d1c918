"""The matcher against the bundled benchmark sets: what counts as evidence, which item a hit names, bad input.

The documents and Ray are in tests/test_decontaminate_stage.py; here the index itself, built once from the
real MMLU, GSM8K and HumanEval files."""

from __future__ import annotations

import gzip
import json

import pytest

from pipeline.errors import UserError
from pipeline.stages.decontaminate.config import DATA_DIR, DecontaminateConfig
from pipeline.stages.decontaminate.index import load_index, normalize


@pytest.fixture(scope="module")
def index():
    return load_index(DecontaminateConfig())


def _rows(name: str) -> list[dict]:
    with gzip.open(f"{DATA_DIR}/{name}", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_normalization_of_case_quotes_punctuation_and_line_breaks():
    a = "Janet’s ducks lay 16 eggs; “quoted” ‘left’ — café\n\n  NEW   line"
    b = "janets DUCKS lay 16 eggs, \"quoted\" 'left' - cafe new\tline"
    assert normalize(a) == normalize(b) == "janets ducks lay 16 eggs quoted left cafe new line".split()
    assert normalize("1,821 and 0.07") == ["1", "821", "and", "0", "07"]  # numbers stay numbers


def test_index_holds_every_item_and_reports_its_size(index):
    stats = index.stats()
    assert stats["items"] == {"mmlu": 14079, "gsm8k": 1319, "humaneval": 164}
    assert stats["ngrams"] > 100_000 and stats["exact_texts"] > 1000
    assert 1 < stats["memory_mb"] < 500


def test_shared_instruction_is_not_evidence_and_hits_name_their_own_item(index):
    moral = [r for r in _rows("mmlu-test.jsonl.gz") if r["subject"] == "moral_scenarios"]
    a, b = moral[10], moral[11]
    instruction = a["question"].split("Scenario 1")[0]
    assert instruction == b["question"].split("Scenario 1")[0] and len(instruction.split()) >= 13
    assert index.stats()["shared_ngrams_ignored"] > 0
    assert index.find(f"An essay on ethics. {instruction} We discuss it below.") is None
    for r in (a, b):
        hit = index.find(f"Quiz of the day:\n{r['question']}\nAnswer: {r[r['answer']]}")
        assert (hit.benchmark, hit.item_id) == ("mmlu", r["id"])


def test_runs_of_numbers_are_not_evidence(index):
    sally = _rows("gsm8k-test.jsonl.gz")[1231]
    assert "50 + 80 + 80 + 60 + 40 + 90 + 100 + 70 + 60" in sally["answer"]
    scores = "Quiz scores\n50 + 80 + 80 + 60 + 40 + 90 + 100 + 70 + 60 = 630\n630 / 9 = 70\nAverage: 70"
    assert index.find(scores) is None
    hit = index.find("Homework: " + sally["question"])  # the words around those numbers are evidence
    assert (hit.benchmark, hit.item_id) == ("gsm8k", "line 1232")


def test_short_items_are_matched_whole_not_by_a_fragment(index):
    short = next(r for r in _rows("mmlu-test.jsonl.gz") if r["question"] == "The coronal suture joins the")
    text = f"{short['question']} {short[short['answer']]}"
    assert len(normalize(text)) < 13
    hit = index.find(f"Anatomy flashcards. {text.upper()} Next card.")
    assert (hit.item_id, hit.how) == (short["id"], f"exact, {len(normalize(text))} words")
    assert index.find("The coronal suture joins two bones of the skull.") is None


def test_bad_benchmark_lines_name_the_file_and_line(tmp_path):
    p = tmp_path / "bench.jsonl"
    p.write_text('{"text": "fine item"}\n{"text": oops}\n')
    with pytest.raises(UserError, match=r"bench.jsonl line 2: expected a JSON object"):
        load_index(DecontaminateConfig(benchmarks=[{"path": str(p)}]))
    q = tmp_path / "mc.jsonl"
    q.write_text('{"question": "q", "answer": "E", "A": "a"}\n')
    with pytest.raises(UserError, match=r"mc.jsonl line 1: .*answer \(naming a field\)"):
        load_index(
            DecontaminateConfig(
                benchmarks=[{"path": str(q), "fields": ["question"], "answer_field": "answer"}]
            )
        )
    with pytest.raises(UserError, match=r"missing.jsonl: not found"):
        load_index(DecontaminateConfig(benchmarks=[{"path": str(tmp_path / "missing.jsonl")}]))


def test_a_users_own_set_of_short_items_is_matched_whole(tmp_path):
    p = tmp_path / "mine.jsonl"
    rows = [
        {"q": "Name the largest moon of the planet Saturn", "a": "Titan", "uid": "m1"},
        {"q": "Why?", "a": "x"},
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DecontaminateConfig(benchmarks=[{"path": str(p), "fields": ["q", "a"], "id_field": "uid"}])
    index = load_index(cfg)
    assert index.stats()["ngrams"] == 0 and index.stats()["exact_texts"] == 2  # whole, question; not "why x"
    hit = index.find("Quiz night!\nNAME the largest moon of the planet Saturn:  titan.\nNext question.")
    assert (hit.benchmark, hit.item_id) == ("mine", "m1")
    assert index.find("Titan is the largest moon of the planet Saturn.") is None
