"""Teacher labels: sample documents from a stage output (stratified by source) and have an LLM rate them.

The teacher runs through synth's backends (vLLM's offline engine in Ray actors, or an OpenAI-compatible
endpoint such as `vllm serve`) with the additive 0-5 rubric of classifiers/rubric.py. Answers without a
clear score are counted and written aside with the reply, never guessed.

Writes, under OUT/: labels.parquet (id, text, score, teacher, prompt_version, source, url),
unparsed.parquet (the same without score, plus the reply and why it was not parsed) and annotate.json
(counts by source, score histogram, parse failures by reason).
"""

from __future__ import annotations

import hashlib
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from classifiers.rubric import PROMPT_VERSION, build_prompt, parse_score
from pipeline import storage
from pipeline.errors import UserError

LABELS_FILE, UNPARSED_FILE, SUMMARY_FILE = "labels.parquet", "unparsed.parquet", "annotate.json"


def sample_key(doc_id: str, seed: int) -> float:
    """A uniform number per document: the n smallest keys of a source are a uniform random sample of it."""
    return int.from_bytes(hashlib.sha256(f"{seed}\x1f{doc_id}".encode()).digest()[:8], "big") / 2**64


def allocate(counts: dict[str, int], n: int) -> dict[str, int]:
    """Documents per source, proportional to its size (largest remainder), at least one per source."""
    total = sum(counts.values())
    if n >= total:
        return dict(counts)
    exact = {s: n * c / total for s, c in counts.items()}
    alloc = {s: min(c, max(1, int(exact[s]))) for s, c in counts.items()}
    for s in sorted(counts, key=lambda s: exact[s] - int(exact[s]), reverse=True):
        if sum(alloc.values()) >= n:
            break
        if alloc[s] < counts[s]:
            alloc[s] += 1
    return alloc


def _keyed(batch: pa.Table, seed: int) -> pa.Table:
    keys = [sample_key(i, seed) for i in batch["id"].to_pylist()]
    return batch.append_column("sample_key", pa.array(keys, pa.float64()))


def _below(batch: pa.Table, cutoffs: dict[str, float]) -> pa.Table:
    limit = pa.array([cutoffs.get(s, 0.0) for s in batch["source"].to_pylist()], pa.float64())
    return batch.filter(pc.less(batch["sample_key"], limit))


def sample_docs(docs, n: int, seed: int = 0) -> tuple[list[dict], dict[str, int]]:
    """A stratified sample of a Ray Dataset of documents: (rows, documents per source in the input).

    Scales to large outputs: only rows whose key falls under a per-source cutoff (a few times the share
    wanted) reach the driver; the exact sample is the n_s smallest keys per source.
    """
    docs = docs.select_columns(["id", "text", "source", "url"])
    counts = {r["source"]: r["count()"] for r in docs.groupby("source").count().take_all()}
    if not counts:
        raise UserError("the stage output has no documents to sample")
    alloc = allocate(counts, n)
    keyed = docs.map_batches(_keyed, fn_args=(seed,), batch_format="pyarrow")
    factor = 3.0
    while True:
        cutoffs = {s: min(1.0, factor * alloc[s] / counts[s] + 20 / counts[s]) for s in counts}
        rows = keyed.map_batches(_below, fn_args=(cutoffs,), batch_format="pyarrow").take_all()
        by_source: dict[str, list[dict]] = {}
        for r in rows:
            by_source.setdefault(r["source"], []).append(r)
        if all(len(by_source.get(s, [])) >= k for s, k in alloc.items()):
            break
        factor *= 4  # unlucky keys: widen the cutoff (it reaches 1.0, every document, quickly)
    sample = []
    for s in sorted(alloc):
        picked = sorted(by_source[s], key=lambda r: (r["sample_key"], r["id"]))[: alloc[s]]
        sample += [{k: r[k] for k in ("id", "text", "source", "url")} for r in picked]
    return sample, counts


def teacher_name(backend) -> str:
    return f"{backend.kind}:{backend.model}"


def label_replies(sample: list[dict], replies: list[dict], teacher: str) -> tuple[list[dict], list[dict]]:
    """Split generations into labels (a parsed score) and unparsed rows (with the reply and the reason)."""
    labels, unparsed = [], []
    for doc, rep in zip(sample, replies):
        base = {**doc, "teacher": teacher, "prompt_version": PROMPT_VERSION}
        if rep.get("error"):
            unparsed.append({**base, "reply": None, "reason": f"generation failed: {rep['error']}"})
            continue
        score, why = parse_score(rep.get("generation"))
        if score is None:
            unparsed.append({**base, "reply": rep.get("generation"), "reason": why})
        else:
            labels.append({**base, "score": score})
    return labels, unparsed


LABEL_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.large_string()),
        ("score", pa.int64()),
        ("teacher", pa.string()),
        ("prompt_version", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
    ]
)
UNPARSED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.large_string()),
        ("teacher", pa.string()),
        ("prompt_version", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("reply", pa.large_string()),
        ("reason", pa.string()),
    ]
)


def _write(rows: list[dict], schema: pa.Schema, uri: str) -> None:
    fs, path = storage.resolve(uri)
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)
    pq.write_table(table, path + ".tmp", filesystem=fs)
    fs.move(path + ".tmp", path)


def annotate(
    output: str,
    stage: str,
    n: int,
    backend,
    out_dir: str,
    seed: int = 0,
    max_doc_chars: int = 4000,
    cache_dir: str | None = None,
) -> dict:
    """Rate a stratified sample of `stage`'s kept documents in `output` with the teacher; write OUT/ files."""
    from pipeline.runner import read_docs
    from synth.backends import generate

    t0 = time.time()
    sample, counts = sample_docs(read_docs(output, stage), n, seed)
    prompts = [{"id": d["id"], "prompt": build_prompt(d["text"] or "", max_doc_chars)} for d in sample]
    replies = generate(prompts, backend, cache_dir=cache_dir)
    teacher = teacher_name(backend)
    labels, unparsed = label_replies(sample, replies, teacher)

    storage.make_dir(out_dir)
    _write(labels, LABEL_SCHEMA, storage.join(out_dir, LABELS_FILE))
    _write(unparsed, UNPARSED_SCHEMA, storage.join(out_dir, UNPARSED_FILE))
    by_source: dict[str, dict] = {}
    for row, kind in [(r, "labeled") for r in labels] + [(r, "unparsed") for r in unparsed]:
        s = by_source.setdefault(
            row["source"], {"in_output": counts[row["source"]], "sampled": 0, "labeled": 0, "unparsed": 0}
        )
        s["sampled"] += 1
        s[kind] += 1
    reasons: dict[str, int] = {}
    for r in unparsed:
        key = r["reason"].split(":")[0] if r["reason"].startswith("generation failed") else r["reason"]
        reasons[key] = reasons.get(key, 0) + 1
    summary = {
        "input": storage.join(output, stage),
        "teacher": teacher,
        "prompt_version": PROMPT_VERSION,
        "seed": seed,
        "requested": n,
        "sampled": len(sample),
        "labeled": len(labels),
        "unparsed": len(unparsed),
        "unparsed_reasons": dict(sorted(reasons.items())),
        "scores": {str(k): sum(1 for r in labels if r["score"] == k) for k in range(6)},
        "by_source": dict(sorted(by_source.items())),
        "wall_s": round(time.time() - t0, 1),
    }
    storage.write_json(storage.join(out_dir, SUMMARY_FILE), summary)
    return summary
