"""Labeled documents for the educational-value classifier: read JSONL/Parquet, binarize, split by group.

A label file holds one document per record with `text` and a numeric `score` (a 0-5 teacher rating, or
0/1 reference-vs-random labels). Optional columns: `group` (documents that must fall on the same side of
the train/validation split: the same site, the same article at several reading levels), `url` (its host
is the group when there is no `group`), `id`, `source`, `teacher`/`prompt_version` (from
`phicurate classifier annotate`) and `label_source` (where the labels came from, for metrics.json).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np
import pyarrow.parquet as pq

from classifiers.score import NEG, POS
from pipeline import storage
from pipeline.errors import UserError

LABEL_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".jsonl.zst")  # what a directory contributes
MAX_BAD_LISTED = 20


@dataclass
class Labels:
    files: list[str]
    texts: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    label_sources: set[str] = field(default_factory=set)
    bad: int = 0  # records without a usable text or score, skipped and listed in `bad_examples`
    bad_examples: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def where(self) -> str:
        return ", ".join(self.files)

    def data_hash(self) -> str:
        """SHA-256 of the (text, score) records in order: the same labels give the same hash in any format."""
        h = hashlib.sha256()
        for t, s in zip(self.texts, self.scores):
            h.update(t.encode("utf-8") + b"\x1f" + repr(float(s)).encode() + b"\n")
        return h.hexdigest()

    def source_description(self) -> str:
        return "; ".join(sorted(self.label_sources)) or f"user-provided labels ({self.where})"

    def add_bad(self, where: str, why: str) -> None:
        self.bad += 1
        if len(self.bad_examples) < MAX_BAD_LISTED:
            self.bad_examples.append(f"{where}: {why}")


def _group(rec: dict) -> str:
    if rec.get("group") not in (None, ""):
        return str(rec["group"])
    if rec.get("url"):
        return urlsplit(str(rec["url"])).netloc or str(rec["url"])
    if rec.get("id") not in (None, ""):
        return str(rec["id"])
    return hashlib.sha1(str(rec.get("text")).encode("utf-8")).hexdigest()


def _add(labels: Labels, rec: dict, where: str) -> None:
    text, score = rec.get("text"), rec.get("score")
    if not isinstance(text, str) or not text.strip():
        return labels.add_bad(where, "no text")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not np.isfinite(score):
        return labels.add_bad(where, f"score is not a number (got {score!r})")
    labels.texts.append(text)
    labels.scores.append(float(score))
    labels.groups.append(_group(rec))
    labels.sources.append(str(rec.get("source") or ""))
    if rec.get("label_source"):
        labels.label_sources.add(str(rec["label_source"]))
    elif rec.get("teacher"):
        labels.label_sources.add(f"teacher LLM {rec['teacher']} (rubric {rec.get('prompt_version')})")


def _read_jsonl(labels: Labels, path: str) -> None:
    fs, p = storage.resolve(path)
    with fs.open_input_stream(p, compression="detect") as f:
        for lineno, line in enumerate(f.read().decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                labels.add_bad(f"{path}:{lineno}", f"not JSON ({e.msg})")
                continue
            if not isinstance(rec, dict):
                labels.add_bad(f"{path}:{lineno}", "not a JSON object")
                continue
            _add(labels, rec, f"{path}:{lineno}")


def _read_parquet(labels: Labels, path: str) -> None:
    fs, p = storage.resolve(path)
    table = pq.read_table(p, filesystem=fs)
    for col in ("text", "score"):
        if col not in table.column_names:
            raise UserError(
                f"{path}: label file has no '{col}' column (columns: {', '.join(table.column_names)})"
            )
    for i, rec in enumerate(table.to_pylist()):
        _add(labels, rec, f"{path} row {i}")


def read_labels(paths: list[str]) -> Labels:
    """Read label files (or directories of them) in order; raise UserError for missing files or no usable
    records."""
    files: list[str] = []
    for path in paths:
        if not storage.exists(path):
            raise UserError(f"{path}: label file not found")
        # a directory from `classifier annotate`: its unparsed.parquet holds answers without a score
        found = [
            f
            for f in storage.list_files(path, recursive=True)
            if f.endswith(LABEL_SUFFIXES) and not f.endswith("unparsed.parquet")
        ]
        files += found if found else [path]
    labels = Labels(files=files)
    for f in files:
        (_read_parquet if f.endswith(".parquet") else _read_jsonl)(labels, f)
    if not labels.texts:
        raise UserError(
            f"{labels.where}: no labeled records (need `text` and a numeric `score`; {labels.bad} bad records"
            + (f", e.g. {labels.bad_examples[0]}" if labels.bad_examples else "")
            + ")"
        )
    return labels


def fasttext_label(score: float, threshold: float, per_score: bool) -> str:
    """`__label__pos`/`__label__neg` at the score threshold, or `__label__<rating>` for a per-rating model."""
    if per_score:
        return f"__label__{int(round(score))}"
    return POS if score >= threshold else NEG


def in_validation(group: str, fraction: float, seed: int) -> bool:
    """Deterministic split by group: a group's hash decides its side, so a site never lands on both sides."""
    h = int.from_bytes(hashlib.sha256(f"{seed}\x1f{group}".encode("utf-8")).digest()[:8], "big")
    return h / 2**64 < fraction
