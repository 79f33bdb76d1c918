"""Hash-partitioned shuffles through storage for dedup's global steps (bucketing, components, verification,
assignment).

A shuffle is two sets of Ray tasks. Scatter: each task reads one file (or one batch of documents), tags its
rows with PART = hash(key) % partitions and writes them as `<dir>/p=<PART>/<name>.parquet`. Gather: one
task per partition reads every file of its `p=<k>` directories, works on the whole partition with
pyarrow's vectorized kernels, writes its result as one file and returns a few counts. Memory per task is
bounded by rows / partitions; the driver holds one small dict per task and never a block reference.

Why not Ray Data's groupby: its shuffles keep a reference and metadata for every map-output block on the
driver while they run, each round of a chain of shuffles kept the lineage and statistics of the ones
before, and nothing of it survives a killed run. Files in the step's directory are the commit unit
(steps.py): a rerun reads them instead of recomputing. File names are a function of the task's input, so
a retried task overwrites what its failed attempt wrote instead of adding to it.
"""

from __future__ import annotations

import posixpath
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import xxhash

from pipeline import storage

PART = "_dedup_part"
# (file, function, keyword arguments): a scatter's input, tagged by the function with PART
Source = tuple[str, Callable[..., pa.Table], dict]


def part_of(keys: pa.Array | pa.ChunkedArray, partitions: int) -> pa.Array:
    """The partition of each string or binary key. pyarrow has no hash kernel, so xxh64 per value."""
    return pa.array([xxhash.xxh64_intdigest(k) % partitions for k in keys.to_pylist()], pa.int64())


def name_of(values: pa.Array | pa.ChunkedArray) -> str:
    """A file name that is a function of a batch's content (its keys, in order)."""
    h = xxhash.xxh64()
    for v in values.to_pylist():
        h.update(v if isinstance(v, bytes) else v.encode("utf-8"))
        h.update(b"\0")
    return f"{h.hexdigest()}-{len(values)}"


def write_table(t: pa.Table, uri: str) -> None:
    fs, path = storage.resolve(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    pq.write_table(t, path, filesystem=fs)


def read_files(files: list[str], schema: pa.Schema) -> pa.Table:
    """The rows of `files` with `schema` (an empty table when there are none)."""
    tables = []
    for uri in files:
        fs, path = storage.resolve(uri)
        tables.append(pq.read_table(path, filesystem=fs).cast(schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def scatter_table(t: pa.Table, out_dir: str, name: str) -> int:
    """Write the rows of `t` (PART-tagged) to `out_dir/p=<PART>/<name>.parquet`; returns the rows."""
    if not t.num_rows:
        return 0
    t = t.take(np.argsort(t[PART].to_numpy(), kind="stable"))
    parts = t[PART].to_numpy()
    values, starts = np.unique(parts, return_index=True)
    t = t.drop_columns([PART])
    ends = list(starts[1:]) + [t.num_rows]
    for p, s, e in zip(values.tolist(), starts.tolist(), ends):
        write_table(t.slice(s, e - s), storage.join(out_dir, f"p={p}", f"{name}.parquet"))
    return t.num_rows


def read_partition(in_dir: str, p: int, schema: pa.Schema) -> pa.Table:
    return read_files(storage.list_files(storage.join(in_dir, f"p={p}"), suffix=".parquet"), schema)


@ray.remote(num_cpus=1)
def _task(task: Callable[..., dict], item, kwargs: dict) -> dict:
    return task(item, **kwargs)


def run_tasks(task: Callable[..., dict], items: list, **kwargs) -> dict[str, int]:
    """`task(item, **kwargs)` for every item as Ray tasks; their counts summed. The driver holds one
    reference and one small dict per task (a few per partition), never rows."""
    shared = ray.put(kwargs)  # sent once, not once per task
    refs = [_task.remote(task, item, shared) for item in items]
    total: dict[str, int] = {}
    for counts in ray.get(refs):
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
    return total


def _scatter_one(source: Source, partitions: int, out_dir: str) -> dict:
    uri, fn, kw = source
    fs, path = storage.resolve(uri)
    t = fn(pq.read_table(path, filesystem=fs), partitions=partitions, **kw)
    stem = posixpath.basename(path)[: -len(".parquet")]
    return {"rows": scatter_table(t, out_dir, f"{xxhash.xxh64(uri).hexdigest()[:8]}-{stem}")}


def scatter(sources: list[Source], partitions: int, out_dir: str) -> int:
    """Every source file's rows, tagged by its function, spread over `out_dir/p=<k>/`; returns the rows."""
    return run_tasks(_scatter_one, sources, partitions=partitions, out_dir=out_dir).get("rows", 0)


def _gather_one(
    p: int, inputs: dict[str, tuple[str, pa.Schema]], fn: Callable, out_dir: str, fn_kwargs: dict
) -> dict:
    tables = {name: read_partition(d, p, schema) for name, (d, schema) in inputs.items()}
    out, counts = fn(**tables, **fn_kwargs)
    write_table(out, storage.join(out_dir, f"{p:06d}.parquet"))
    return {"rows": out.num_rows, **counts}


def gather(
    partitions: int,
    inputs: dict[str, tuple[str, pa.Schema]],
    fn: Callable[..., tuple[pa.Table, dict[str, int]]],
    out_dir: str,
    **fn_kwargs,
) -> dict[str, int]:
    """`fn(**{name: partition k of that input})` for every partition k, written as `out_dir/<k>.parquet`
    (one typed file per partition, empty or not); returns the summed counts (`rows` and fn's own)."""
    return run_tasks(
        _gather_one, list(range(partitions)), inputs=inputs, fn=fn, out_dir=out_dir, fn_kwargs=fn_kwargs
    )


def files(out_dir: str) -> list[str]:
    return storage.list_files(out_dir, suffix=".parquet")
