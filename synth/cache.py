"""Generations kept across runs and configs, keyed by prompt id.

Why a cache besides the synth stage's part commits (pipeline/parts.py): a commit belongs to one work
directory, named after the whole synth config and its input, so it serves the rerun of a killed run only.
The cache lives outside the stage (`<cache_dir>/<key>/`, where `key` hashes the model, chat mode and
sampling: a changed teacher or temperature never reuses old text), so a run with other quality checks,
dedup or decontamination settings reuses every generation, and LLM labelling (classifiers/annotate.py,
through `generate`) resumes with it. Only successful generations are cached, so a rerun retries exactly
the prompts that have no output yet. Files are written under a temporary name, then renamed: a reader
never sees half a file.

Two kinds of file, one schema: synth writes one file per part of prompts (`part_file`, named after the
part's prompt ids), which that part's task alone reads back; `generate` writes one file per batch
(`write_part`) and reads them all (`read`), for callers with prompts in the thousands.
"""

from __future__ import annotations

import hashlib
import posixpath
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage

CACHE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("generation", pa.large_string()),
        pa.field("gen_tokens", pa.int64()),
        pa.field("finish_reason", pa.string()),
    ]
)


def _successes(table: pa.Table) -> pa.Table:
    if "error" in table.column_names:
        table = table.filter(pc.is_null(table["error"]))
    return table.select(CACHE_SCHEMA.names).cast(CACHE_SCHEMA)


def _write(uri: str, table: pa.Table) -> None:
    fs, path = storage.resolve(uri)
    folder, name = posixpath.split(path)
    fs.create_dir(folder, recursive=True)
    tmp = posixpath.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, path)


def write_part(cache_dir: str, table: pa.Table) -> None:
    """Add successful generations (rows with a null `error`) as one file."""
    ok = _successes(table)
    if ok.num_rows:
        _write(storage.join(cache_dir, f"part-{uuid.uuid4().hex}.parquet"), ok)


def part_file(cache_dir: str, ids: list[str]) -> str:
    """The file of one part of prompts: named after its ids, so the same prompts find it in any run."""
    return storage.join(
        cache_dir, f"part-{hashlib.sha256(chr(31).join(ids).encode()).hexdigest()[:24]}.parquet"
    )


def read_file(uri: str) -> pa.Table:
    """One cache file (empty if there is none)."""
    fs, path = storage.resolve(uri)
    try:
        return pq.read_table(path, filesystem=fs).cast(CACHE_SCHEMA)
    except FileNotFoundError:
        return CACHE_SCHEMA.empty_table()


def write_file(uri: str, tables: list[pa.Table]) -> None:
    """Replace one cache file with the successful generations of `tables`."""
    ok = pa.concat_tables([_successes(t) for t in tables])
    if ok.num_rows:
        _write(uri, ok)


def read(cache_dir: str) -> pa.Table:
    """Every cached generation, one row per prompt id (the first file wins if a prompt was generated
    twice)."""
    parts = storage.list_files(cache_dir, suffix=".parquet")
    if not parts:
        return CACHE_SCHEMA.empty_table()
    table = pa.concat_tables([read_file(p) for p in parts])
    if pc.count_distinct(table["id"]).as_py() == table.num_rows:
        return table
    rest = [n for n in CACHE_SCHEMA.names if n != "id"]
    first = table.group_by("id", use_threads=False).aggregate([(n, "first") for n in rest])
    return pa.table({"id": first["id"], **{n: first[f"{n}_first"] for n in rest}}, schema=CACHE_SCHEMA)
