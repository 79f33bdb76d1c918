"""Generations that survive a killed or failed run, keyed by prompt id.

Why outside the stage directory: the runner moves a stage's output into place only when the whole
stage succeeds, so a run killed after generating 90% of its prompts would otherwise lose all of it.
Each generation batch is written as its own Parquet part (temporary name, then rename) into
`<cache_dir>/<key>/`, where `key` hashes the model and sampling settings: a changed teacher or
temperature never reuses old text. Only successful generations are cached, so a rerun retries
exactly the prompts that have no output yet.
"""

from __future__ import annotations

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


def write_part(cache_dir: str, table: pa.Table) -> None:
    """Add successful generations (rows with a null `error`) as one part; a reader never sees half a part."""
    ok = table.filter(pc.is_null(table["error"])).select(CACHE_SCHEMA.names).cast(CACHE_SCHEMA)
    if ok.num_rows == 0:
        return
    storage.make_dir(cache_dir)
    name = f"part-{uuid.uuid4().hex}.parquet"
    fs, path = storage.resolve(storage.join(cache_dir, name))
    tmp = storage.resolve(storage.join(cache_dir, f".{name}.tmp"))[1]
    pq.write_table(ok, tmp, filesystem=fs)
    fs.move(tmp, path)


def read(cache_dir: str) -> pa.Table:
    """Every cached generation, one row per prompt id (the first part wins if a prompt was generated
    twice)."""
    parts = storage.list_files(cache_dir, suffix=".parquet")
    if not parts:
        return CACHE_SCHEMA.empty_table()
    tables = []
    for p in parts:
        fs, path = storage.resolve(p)
        tables.append(pq.read_table(path, filesystem=fs).cast(CACHE_SCHEMA))
    table = pa.concat_tables(tables)
    if pc.count_distinct(table["id"]).as_py() == table.num_rows:
        return table
    rest = [n for n in CACHE_SCHEMA.names if n != "id"]
    first = table.group_by("id", use_threads=False).aggregate([(n, "first") for n in rest])
    return pa.table({"id": first["id"], **{n: first[f"{n}_first"] for n in rest}}, schema=CACHE_SCHEMA)
