"""Stage `decontaminate` on real Ray: planted items of every bundled benchmark are dropped, verbatim and
perturbed, naming the right item; clean educational prose and number tables are kept; contamination.json
and the record count per benchmark, merged from the parts' summaries. Also synth's use of the same code
(earlier drops pass through)."""

from __future__ import annotations

import gzip
import io
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline import storage
from pipeline.config import parse_config
from pipeline.registry import BY_NAME
from pipeline.runner import RECORD, run_stage
from pipeline.stages.decontaminate import stage as decontaminate_stage
from pipeline.stages.decontaminate.config import DATA_DIR, DecontaminateConfig
from pipeline.stages.decontaminate.core import mark
from pipeline.stages.decontaminate.index import load_index
from pipeline.tools.report import contamination_table
from tests.conftest import DATA


def _rows(name: str) -> list[dict]:
    with gzip.open(f"{DATA_DIR}/{name}", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _articles(n: int) -> list[str]:
    """Real educational prose: OneStopEnglish articles from the demo corpus."""
    with zstandard.ZstdDecompressor().stream_reader(
        (DATA / "demo" / "onestopenglish.jsonl.zst").open("rb")
    ) as f:
        return [json.loads(line)["text"] for _, line in zip(range(n), io.TextIOWrapper(f, encoding="utf-8"))]


def perturb(text: str, seed: int) -> str:
    """Case, punctuation, whitespace and line breaks changed; the words stay (as a reformatted copy)."""
    rng = random.Random(seed)
    out = []
    for w in text.split():
        w = w.upper() if rng.random() < 0.2 else w.capitalize() if rng.random() < 0.2 else w
        w = w.replace("'", "’").replace(",", " ;").replace("?", " ?!").replace('"', "“")
        out.append(w + rng.choice([" ", "  ", "\n", " \n\n", "\t"]))
    return "".join(out)


MMLU, GSM8K, HUMANEVAL = (
    _rows("mmlu-test.jsonl.gz"),
    _rows("gsm8k-test.jsonl.gz"),
    _rows("HumanEval.jsonl.gz"),
)
MORAL = [r for r in MMLU if r["subject"] == "moral_scenarios"]
SHORT = next(r for r in MMLU if r["question"] == "The coronal suture joins the")  # 9 words with its answer
# (benchmark, item id, leaked text): question + correct answer, problem + solution, prompt + solution
PLANTED = [
    ("mmlu", MMLU[2000]["id"], f"{MMLU[2000]['question']}\nAnswer: {MMLU[2000][MMLU[2000]['answer']]}"),
    ("mmlu", MORAL[3]["id"], f"{MORAL[3]['question']}\n{MORAL[3][MORAL[3]['answer']]}"),
    ("mmlu", MORAL[4]["id"], f"{MORAL[4]['question']}\n{MORAL[4][MORAL[4]['answer']]}"),
    ("mmlu", SHORT["id"], f"{SHORT['question']} {SHORT[SHORT['answer']]}"),
    ("gsm8k", "line 101", f"{GSM8K[100]['question']}\n{GSM8K[100]['answer']}"),
    ("humaneval", HUMANEVAL[30]["task_id"], HUMANEVAL[30]["prompt"] + HUMANEVAL[30]["canonical_solution"]),
]
TABLES = {
    "prices": "Price list\n" + "\n".join(f"Item {i}: ${i * 3 % 17}.{i * 7 % 100:02d}" for i in range(1, 60)),
    "scores": "Results\n"
    + "\n".join(f"Round {i} 50, 80, 80, 60, 40, 90, 100, 70, 60 total 630" for i in range(9)),
    "phones": "Directory\n"
    + "\n".join(f"Office {i} (555) 01{i:02d}-{i * 37 % 10000:04d}" for i in range(60)),
}
TOPICAL = (
    "Photosynthesis requires light, carbon dioxide and water. In this lesson we look at how the coronal "
    "suture and the other sutures of the skull join its bones, and why Janet's class keeps a duck diary: "
    "each day the ducks lay eggs, and the pupils compute the mean of their quiz scores and the price of eggs."
)


@pytest.fixture(scope="module")
def docs():
    prose = _articles(2 * len(PLANTED) + 4)
    rows = []
    for k, (bench, item, text) in enumerate(PLANTED):
        for variant, leak in (("verbatim", text), ("perturbed", perturb(text, k))):
            host = prose.pop()
            cut = len(host) // 2
            rows.append((f"{bench}|{item}|{variant}", host[:cut] + "\n" + leak + "\n" + host[cut:]))
    rows += [(f"clean|{i}", t) for i, t in enumerate(prose)] + [("clean|topical", TOPICAL)]
    rows += [(f"table|{k}", t) for k, t in TABLES.items()]
    return rows


@pytest.mark.slow  # 25-50 s on 2 shared cores: the index is built, then loaded by two actors
def test_stage_drops_planted_items_and_keeps_clean_documents(ray_local, tmp_path, docs):
    out_dir = tmp_path / "out"
    config = parse_config(
        {
            "run": {"output": str(out_dir)},
            "ingest": {"inputs": [{"path": "tests/data/demo", "source": "web/x"}]},
            "decontaminate": {},
        }
    )
    table = pa.table(
        {
            "id": [i for i, _ in docs],
            "text": [t for _, t in docs],
            "source": ["web/x"] * (len(docs) - 3) + ["web/y"] * 3,
        }
    )
    # dedup's output as the runner leaves it: two files (two parts, one per actor; every other document
    # in each, so both hold planted items) and a complete record
    (out_dir / "dedup").mkdir(parents=True)
    for name, first in (("a", 0), ("b", 1)):
        rows = table.take(list(range(first, table.num_rows, 2)))
        pq.write_table(rows, out_dir / "dedup" / f"part-{name}.parquet")
    up = {"status": "complete", "config_hash": "x", "input_fingerprint": "y", "docs_out": table.num_rows}
    storage.write_json(str(out_dir / "dedup" / RECORD), up)
    record = run_stage(BY_NAME["decontaminate"].implementation(), config, "fp")
    work = out_dir / "decontaminate"
    assert record["parts"] == 2 and record["parts_reused"] == 0
    kept, dropped = record["docs_out"], record["dropped"]
    out = {r["id"]: r for r in pq.read_table(sorted((work / "dropped").glob("*.parquet"))).to_pylist()}
    assert pq.read_table(sorted(work.glob("*.parquet"))).num_rows == kept
    planted = {i for i, _ in docs if i.split("|")[0] in ("mmlu", "gsm8k", "humaneval")}
    assert set(out) == planted, f"wrongly kept {planted - set(out)}, wrongly dropped {set(out) - planted}"
    for doc_id, r in out.items():
        bench, item, _ = doc_id.split("|")
        assert r["drop_reason"] == f"contaminated:{bench}"
        assert r["drop_detail"].startswith(f"{item} ("), r["drop_detail"]
    assert "exact" in out[f"mmlu|{SHORT['id']}|perturbed"]["drop_detail"]  # shorter than 13 words
    assert kept == len(docs) - len(planted) and dropped == {
        "contaminated:mmlu": 8,
        "contaminated:gsm8k": 2,
        "contaminated:humaneval": 2,
    }
    report = storage.read_json(str(work / decontaminate_stage.REPORT))
    assert (
        report["benchmarks"]["mmlu"]["items_found"] == 4 and report["benchmarks"]["mmlu"]["docs_dropped"] == 8
    )
    assert report["benchmarks"]["gsm8k"]["by_source"] == {"web/x": 2}
    assert report["benchmarks"]["humaneval"]["examples"][0]["match"].startswith(HUMANEVAL[30]["task_id"])
    # the examples merged from both parts' summaries: the 5 smallest ids of the 8, as one sorted pass picks
    mmlu = sorted(i for i, r in out.items() if r["drop_reason"] == "contaminated:mmlu")
    in_a = set(table["id"].to_pylist()[::2])
    assert {i in in_a for i in mmlu[:5]} == {True, False}  # the first five come from both parts
    assert [e["doc"] for e in report["benchmarks"]["mmlu"]["examples"]] == mmlu[:5]
    assert record["details"]["benchmarks"]["humaneval"] == {
        "items": 164,
        "items_found": 1,
        "docs_dropped": 2,
        "by_source": {"web/x": 2},
    }
    assert record["details"]["index"]["memory_mb"] > 0
    table = contamination_table(str(out_dir))  # phicurate report's table, from contamination.json
    assert "<td>mmlu</td><td class=n>4 of 14079</td><td class=n>8</td><td>web/x: 8</td>" in table
    assert f"humaneval|{HUMANEVAL[30]['task_id']}|perturbed" in table


def test_earlier_drops_pass_through_as_in_synth():
    leak = PLANTED[4][2]
    batch = pa.Table.from_pylist(
        [
            {"id": "a", "text": leak, "drop_reason": None, "drop_detail": None},
            {"id": "b", "text": leak, "drop_reason": "too_short", "drop_detail": "3 words"},
            {"id": "c", "text": TOPICAL, "drop_reason": None, "drop_detail": None},
        ]
    )
    cfg = DecontaminateConfig(
        benchmarks=[
            {"path": "bundled:gsm8k-test.jsonl.gz", "name": "gsm8k", "fields": ["question", "answer"]}
        ]
    )
    rows = {r["id"]: r for r in mark(batch, load_index(cfg)).to_pylist()}
    assert rows["a"]["drop_reason"] == "contaminated:gsm8k" and rows["a"]["drop_detail"].startswith(
        "line 101 ("
    )
    assert (rows["b"]["drop_reason"], rows["b"]["drop_detail"]) == ("too_short", "3 words")
    assert rows["c"]["drop_reason"] is None
