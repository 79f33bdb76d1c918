"""The held-out sets of an ablation, and the arms' documents with those sets removed.

Educational documents are held out by a hash of their id (so the choice depends on nothing but the id) and
evaluated on their first tokens; benchmark items (MMLU, GSM8K) are evaluated as question + answer text.
Every arm reads stage outputs rewritten without them: a document is removed when its id is held out, or when
it shares a word n-gram with any held-out text (the decontaminate stage's index and normalization), so a copy
of a held-out page under another id is removed too. The removed
documents are kept in `dropped/` with the reason and the n-gram that hit, like any stage's drops.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.errors import UserError
from pipeline.stages.decontaminate.index import BenchmarkIndex
from pipeline.tokenizer import encode_with_eos, load_tokenizer
from pipeline.tools.ablate.spec import BenchmarkHeldout, HeldoutSpec

logger = logging.getLogger(__name__)
SETS = "sets.json"
LETTERS = ("A", "B", "C", "D")


def id_hash(doc_id: str) -> float:
    """A number in [0, 1) fixed by the id alone: the held-out choice survives any change to the arms."""
    return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "little") / 2**64


def edu_documents(spec: HeldoutSpec, output: str) -> pa.Table:
    """Held-out educational documents (id, source, text) from ingest's kept output, smallest hash first."""
    files = storage.list_files(storage.join(output, "ingest"), suffix=".parquet")
    table = pa.concat_tables([_read(f, ["id", "source", "text"]) for f in files])
    table = table.filter(pc.is_in(table["source"], pa.array(spec.edu.sources)))
    if table.num_rows == 0:
        raise UserError(
            f"heldout.edu.sources: ingest's output in {output} has no document of {spec.edu.sources}"
        )
    u = pa.array([id_hash(i) for i in table["id"].to_pylist()], pa.float64())
    table = table.append_column("u", u).filter(pc.less(u, spec.edu.fraction)).sort_by("u")
    if table.num_rows == 0:
        raise UserError(
            f"heldout.edu.fraction {spec.edu.fraction} holds out none of the documents of "
            f"{spec.edu.sources}; raise it"
        )
    return table.slice(0, spec.edu.max_docs).drop_columns(["u"])


def _read(path: str, columns: list[str]) -> pa.Table:
    fs, local = storage.resolve(path)
    return pq.read_table(local, columns=columns, filesystem=fs)


def _jsonl(path: str, n: int) -> list[dict]:
    if not os.path.isfile(path):
        raise UserError(f"heldout.benchmarks: {path}: file not found")
    rows = []
    with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path} line {line_no}: not JSON: {e}") from None
    return rows


def benchmark_items(name: str, b: BenchmarkHeldout) -> list[dict]:
    """Items as {id, text, and for MMLU prompt, choices, answer}; MMLU items round-robin over subjects."""
    rows = _jsonl(b.path, b.max_items)
    need = {"mmlu": ("question", *LETTERS, "answer"), "gsm8k": ("question", "answer")}[b.kind]
    for i, r in enumerate(rows):
        missing = [k for k in need if k not in r]
        if missing:
            raise UserError(f"{b.path} line {i + 1}: a {b.kind} item needs {list(need)}, lacks {missing}")
    if b.kind == "gsm8k":
        return [
            {"id": f"{name}/{i}", "text": f"{r['question']}\nAnswer: {r['answer']}"}
            for i, r in enumerate(rows[: b.max_items])
        ]
    by_subject: dict[str, list[tuple[int, dict]]] = {}
    for i, r in enumerate(rows):
        by_subject.setdefault(r.get("subject", ""), []).append((i, r))
    picked, depth = [], 0
    while len(picked) < min(b.max_items, len(rows)):
        for subject in sorted(by_subject):
            if depth < len(by_subject[subject]) and len(picked) < b.max_items:
                picked.append(by_subject[subject][depth])
        depth += 1
    items = []
    for i, r in picked:
        if r["answer"] not in LETTERS:
            raise UserError(f"{b.path} line {i + 1}: answer {r['answer']!r} is not one of {LETTERS}")
        prompt = f"{r['question']}\nAnswer:"
        choices = [f" {r[k]}" for k in LETTERS]
        items.append(
            {
                "id": r.get("id", f"{name}/{i}"),
                "text": prompt + choices[LETTERS.index(r["answer"])],
                "prompt": prompt,
                "choices": choices,
                "answer": LETTERS.index(r["answer"]),
            }
        )
    return items


def build_sets(spec: HeldoutSpec, output: str, tokenizer: str) -> dict:
    """Every held-out set with its texts and token ids (the mix's tokenizer), and a fingerprint of it all.

    Educational documents are cut to their first `max_tokens_per_doc` tokens, and the text kept for the
    n-gram check is the decoded cut, so an arm document is removed for sharing what is evaluated."""
    tok = load_tokenizer(tokenizer)
    sets: dict[str, dict] = {}
    if spec.edu is not None:
        docs = edu_documents(spec, output)
        ids = encode_with_eos(tok, docs["text"].to_pylist())
        items = []
        for doc_id, source, full in zip(docs["id"].to_pylist(), docs["source"].to_pylist(), ids):
            cut = full[: spec.edu.max_tokens_per_doc]
            items.append({"id": doc_id, "source": source, "text": tok.decode(cut), "tokens": cut})
        sets["edu"] = {"kind": "edu", "items": items}
    for name, b in spec.benchmarks.items():
        items = benchmark_items(name, b)
        for item, t in zip(items, encode_with_eos(tok, [i["text"] for i in items])):
            item["tokens"] = t
        if b.kind == "mmlu":
            for item in items:
                item["prompt_tokens"] = encode_with_eos(tok, [item["prompt"]])[0][:-1]
                item["choice_tokens"] = [x[:-1] for x in encode_with_eos(tok, item["choices"])]
        sets[name] = {"kind": b.kind, "items": items}
    blob = json.dumps(sets, sort_keys=True).encode()
    return {"fingerprint": hashlib.sha256(blob).hexdigest()[:16], "ngram": spec.ngram, "sets": sets}


def write_sets(sets: dict, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(sets, f)


def read_sets(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def ngram_index(sets: dict) -> BenchmarkIndex:
    """Word n-grams of every held-out text: one shared n-gram removes a document. Every n-gram counts as
    evidence (max_items unbounded), so a passage two held-out texts share still removes its copies."""
    index = BenchmarkIndex(sets["ngram"], min_exact_words=sets["ngram"], max_items=2**31)
    for name, s in sets["sets"].items():
        for item in s["items"]:
            index.add(name, item["id"], [item["text"]])
    return index.build()


def heldout_ids(sets: dict) -> list[str]:
    return [i["id"] for s in sets["sets"].values() if s["kind"] == "edu" for i in s["items"]]


def mark_heldout(batch: pa.Table, ids: list[str], index: BenchmarkIndex) -> pa.Table:
    """drop_reason `heldout_id` (the id is held out) or `heldout_ngram` (detail: the item and n-gram hit)."""
    by_id = pc.is_in(batch["id"], pa.array(ids, pa.string())).to_pylist()
    hits = [None if held else index.find(t or "") for held, t in zip(by_id, batch["text"].to_pylist())]
    reason = ["heldout_id" if held else ("heldout_ngram" if h else None) for held, h in zip(by_id, hits)]
    detail = ["id held out" if held else (h.detail() if h else None) for held, h in zip(by_id, hits)]
    batch = batch.drop_columns([c for c in ("drop_reason", "drop_detail") if c in batch.column_names])
    return batch.append_column("drop_reason", pa.array(reason, pa.string())).append_column(
        "drop_detail", pa.array(detail, pa.string())
    )


def write_pool(base_output: str, stage: str, pool: str, sets: dict) -> dict:
    """OUTPUT/stage's kept documents without the held-out ones, as a complete stage directory `pool`.

    Its record carries the base stage's config hash and an input fingerprint that adds the held-out sets,
    so `mix` in an arm reruns when either changes and is skipped otherwise. Rewritten only when stale."""
    from pipeline.parts import write_dataset
    from pipeline.runner import RECORD, read_docs, read_record

    base = read_record(base_output, stage)
    source_key = {
        "base": {k: base[k] for k in ("config_hash", "input_fingerprint", "docs_out")},
        "heldout": sets["fingerprint"],
    }
    fingerprint = hashlib.sha256(json.dumps(source_key, sort_keys=True).encode()).hexdigest()[:16]
    old = storage.read_json(os.path.join(pool, RECORD))
    if old and old.get("status") == "complete" and old.get("input_fingerprint") == fingerprint:
        return old
    ds = read_docs(base_output, stage).map_batches(
        mark_heldout, fn_args=(heldout_ids(sets), ngram_index(sets)), batch_format="pyarrow"
    )
    work = f"{pool}.tmp"
    if os.path.exists(work):  # left by a killed run
        storage.remove_dir(work)
    storage.make_dir(work)
    written = write_dataset(ds, work)
    docs_out, dropped, words_out = written.docs_out, written.dropped, written.words
    storage.replace_dir(work, pool)
    record = {
        "stage": stage,
        "status": "complete",
        "config_hash": base["config_hash"],
        "input_fingerprint": fingerprint,
        "docs_in": docs_out + sum(dropped.values()),
        "docs_out": docs_out,
        "dropped": dropped,
        "tokens_out": words_out,
        "details": {"ablation_pool_of": storage.join(base_output, stage), "heldout": sets["fingerprint"]},
    }
    storage.write_json(os.path.join(pool, RECORD), record)
    logger.info("pool %s: %d kept, removed %s", stage, docs_out, dropped or "none")
    return record


def write_leak_pool(base_output: str, pool: str, sets: dict) -> None:
    """The held-out educational documents themselves, whole, as a stage directory: the `heldout-leak` arm
    trains on them to show that the harness sees a model that has read its evaluation text."""
    from pipeline.runner import RECORD, read_record

    ids = heldout_ids(sets)
    files = storage.list_files(storage.join(base_output, "ingest"), suffix=".parquet")
    table = pa.concat_tables([_read(f, None) for f in files], promote_options="default")
    table = table.filter(pc.is_in(table["id"], pa.array(ids, pa.string())))
    os.makedirs(pool, exist_ok=True)
    pq.write_table(table, os.path.join(pool, "part-0.parquet"))
    base = read_record(base_output, "ingest")
    storage.write_json(
        os.path.join(pool, RECORD),
        {
            "stage": "ingest",
            "status": "complete",
            "config_hash": base["config_hash"],
            "input_fingerprint": sets["fingerprint"],
            "docs_in": table.num_rows,
            "docs_out": table.num_rows,
            "dropped": {},
            "tokens_out": 0,
            "details": {"ablation_leak_of": sets["fingerprint"]},
        },
    )
