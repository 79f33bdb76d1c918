"""Decontamination drops a document holding a real HumanEval item and keeps the others, naming the item
hit."""

import gzip
import json

import pyarrow as pa
import pytest

from pipeline.errors import UserError
from synth.decontaminate import DecontaminationConfig, decontaminate, load_index, mark

HUMANEVAL = "tests/data/benchmarks/HumanEval.jsonl.gz"


def _items():
    with gzip.open(HUMANEVAL, "rt") as f:
        return [json.loads(line) for line in f]


def _cfg(**kw):
    bench = {"path": HUMANEVAL, "fields": ["prompt", "canonical_solution"], "id_field": "task_id"}
    return DecontaminationConfig(benchmarks=[bench], **kw)


CLEAN = (
    "Photosynthesis is how plants turn light into chemical energy. In the chloroplasts, light reactions "
    "split "
    "water and release oxygen, and the Calvin cycle fixes carbon dioxide into sugars that the plant stores."
)


def _contaminated(item: dict) -> str:
    # a solution blog post that pastes the benchmark function with its docstring, reformatted
    body = (item["prompt"] + item["canonical_solution"]).replace("    ", "\t")
    return "Today we solve a classic exercise.\n\n" + body + "\n\nThat is all for this week, see you soon!"


@pytest.mark.parametrize("strict", [False, True])
def test_drops_the_doc_with_a_humaneval_item_and_keeps_the_clean_one(strict):
    item = _items()[12]
    index = load_index(_cfg(strict=strict))
    assert len(index.items) + index.too_short == 164 and index.n == (10 if strict else 13)
    table = pa.table(
        {
            "id": ["leak", "clean", "gone"],
            "text": [_contaminated(item), CLEAN, _contaminated(item)],
            "drop_reason": [None, None, "too_short"],
            "drop_detail": [None, None, "3 words"],
        }
    )
    out = mark(table, index).to_pylist()
    assert out[0]["drop_reason"] == "contaminated"
    assert out[0]["drop_detail"].startswith(f"HumanEval:{item['task_id']} (")
    assert out[1]["drop_reason"] is None and out[1]["drop_detail"] is None
    assert (out[2]["drop_reason"], out[2]["drop_detail"]) == ("too_short", "3 words")  # earlier drops stay


def test_strict_mode_needs_the_diff_to_confirm_a_shared_10gram():
    item = _items()[0]
    shared = " ".join(item["prompt"].split('"""')[1].split()[:12])  # 12 words of the docstring, nothing else
    text = f"{CLEAN} As a puzzle book once said: {shared}. {CLEAN}"
    assert load_index(_cfg(ngram=10)).find(text) is not None  # plain 10-gram mode flags it
    assert load_index(_cfg(strict=True)).find(text) is None  # the diff finds too little of the item


def test_ray_dataset_path(ray_local):
    item = _items()[40]
    ds = ray_local.data.from_items([{"id": "a", "text": _contaminated(item)}, {"id": "b", "text": CLEAN}])
    rows = {r["id"]: r for r in decontaminate(ds, _cfg()).take_all()}
    assert rows["a"]["drop_reason"] == "contaminated" and item["task_id"] in rows["a"]["drop_detail"]
    assert rows["b"]["drop_reason"] is None


def test_bad_benchmark_line_names_file_and_line(tmp_path):
    p = tmp_path / "bench.jsonl"
    p.write_text('{"text": "fine item"}\n{"text": oops}\n')
    with pytest.raises(UserError, match=r"bench.jsonl line 2: expected a JSON object"):
        load_index(DecontaminationConfig(benchmarks=[{"path": str(p)}]))
