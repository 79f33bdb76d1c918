"""Stages that work part by part: each part is written and committed by the task that computes it.

A stage cuts its input into deterministic parts (an input file, a range of row groups of an upstream
Parquet part). One Ray task (or actor call) per part reads only that part, streams its documents into
`part-<name>.parquet` (kept) and `dropped/part-<name>.parquet` (dropped, with `drop_reason`) in the stage's
work directory, and commits the part by writing `_parts/<name>.json` last, with the part's counts. The
driver receives one small record per part, never documents, so its memory does not grow with the corpus.

The work directory is the same for a rerun with the same config and input (the runner names it after
both), so a run killed after nine parts of ten redoes only the tenth: a part with a commit record is
reused as it is; a part without one is computed again, overwriting whatever a killed task left under its
names (the names are a function of the part, so nothing stray is left behind).

Ray Data's `write_parquet` would write the parts, but it names files by a random id and commits nothing
per file, which is what resuming needs; hence this writer.
"""

from __future__ import annotations

import json
import logging
import posixpath
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import redact, storage
from pipeline.schema import DOC_WITH_DROP_SCHEMA, count_words

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

COMMITS = "_parts"
DROPPED = "dropped"
DROP_COLUMNS = ["drop_reason", "drop_detail"]
# Rows per Parquet row group the writer emits: the unit a downstream stage cuts its parts from.
ROW_GROUP_ROWS = 4096
# A downstream part covers whole row groups of one upstream file, up to this many rows.
PART_ROWS = 50_000
READ_BATCH_ROWS = 1024

# process(spec, stats) -> tables of documents with drop_reason/drop_detail; `stats` takes per-part figures
Process = Callable[[dict, dict], Iterator[pa.Table]]


@dataclass(frozen=True)
class Part:
    """A deterministic slice of a stage's input: `name` is file-safe and unique within the stage."""

    name: str
    spec: dict


@dataclass
class PartsResult:
    parts: int = 0
    parts_reused: int = 0
    docs_in: int = 0  # rows the parts read, as their tasks counted them
    docs_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    words: int = 0
    stats: list[dict] = field(default_factory=list)  # each part's `stats`, in part order (O(parts))


def kept_file(work_dir: str, name: str) -> str:
    return storage.join(work_dir, f"part-{name}.parquet")


def dropped_file(work_dir: str, name: str) -> str:
    return storage.join(work_dir, DROPPED, f"part-{name}.parquet")


def commit_file(work_dir: str, name: str) -> str:
    return storage.join(work_dir, COMMITS, f"{name}.json")


class _Sink:
    """One Parquet file written as row groups of ROW_GROUP_ROWS; opened on the first row, so a part
    with no dropped documents writes no dropped file."""

    def __init__(self, uri: str):
        self.uri = uri
        self.writer: pq.ParquetWriter | None = None
        self.schema: pa.Schema | None = None
        self.buf: list[pa.Table] = []
        self.rows = 0
        self.buffered = 0

    def add(self, t: pa.Table) -> None:
        if self.schema is None:
            self.schema = t.schema
        elif t.schema != self.schema:
            t = t.cast(self.schema)  # one schema per file; a stage's batches differ at most in nullability
        if t.num_rows:
            self.buf.append(t)
            self.buffered += t.num_rows
            self.rows += t.num_rows
        if self.buffered >= ROW_GROUP_ROWS:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        table = pa.concat_tables(self.buf) if self.buf else self.schema.empty_table()
        if self.writer is None:
            fs, path = storage.resolve(self.uri)
            fs.create_dir(posixpath.dirname(path), recursive=True)
            self.writer = pq.ParquetWriter(path, self.schema, filesystem=fs)
        n = table.num_rows if final else table.num_rows - table.num_rows % ROW_GROUP_ROWS
        for start in range(0, n, ROW_GROUP_ROWS):
            self.writer.write_table(table.slice(start, ROW_GROUP_ROWS), row_group_size=ROW_GROUP_ROWS)
        rest = table.slice(n)
        self.buf, self.buffered = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self, always: bool) -> None:
        if self.schema is None:
            return
        if self.rows or always:
            self._flush(final=True)
        if self.writer is not None:
            self.writer.close()


def write_part(process: Process, part: Part, work_dir: str, secrets: dict[str, str]) -> dict:
    """Compute one part, write its kept and dropped files, then its commit record; return the record."""
    stats: dict = {}
    kept, dropped = _Sink(kept_file(work_dir, part.name)), _Sink(dropped_file(work_dir, part.name))
    counts: dict[str, int] = {}
    docs_out = words = 0
    for table in process(part.spec, stats):
        missing = [c for c in ["id", "text", *DROP_COLUMNS] if c not in table.column_names]
        if missing:
            raise RuntimeError(f"part {part.name}: the stage's output lacks columns {missing}")
        if secrets:
            table = redact.redact_table(table, secrets)
        is_kept = pc.is_null(table["drop_reason"])
        k = table.filter(is_kept).drop_columns(DROP_COLUMNS)
        d = table.filter(pc.invert(is_kept))
        kept.add(k)
        docs_out += k.num_rows
        words += pc.sum(count_words(k["text"])).as_py() or 0
        if d.num_rows:
            dropped.add(d)
            for vc in pc.value_counts(d["drop_reason"]).to_pylist():
                counts[vc["values"]] = counts.get(vc["values"], 0) + vc["counts"]
        elif dropped.schema is None:
            dropped.schema = table.schema  # so every dropped file of the part has the full schema
    if kept.schema is None:
        raise RuntimeError(f"part {part.name}: the stage yielded no table (not even an empty, typed one)")
    kept.close(always=True)  # an empty part is an empty typed file: the next stage can read it
    dropped.close(always=False)
    record = {
        "name": part.name,
        "docs_in": stats.pop("docs_in", docs_out + sum(counts.values())),
        "docs_out": docs_out,
        "dropped": dict(sorted(counts.items())),
        "words": words,
        "stats": stats,
    }
    storage.make_dir(storage.join(work_dir, COMMITS))
    storage.write_json(commit_file(work_dir, part.name), record)  # the commit: written last
    return record


class _Runner:
    """A Ray Data actor (or, in task mode, a function's state) that runs parts with one `process`."""

    def __init__(self, factory: Callable[[], Process], work_dir: str, secrets: dict[str, str]):
        self.process = factory()
        self.work_dir = work_dir
        self.secrets = secrets

    def __call__(self, batch: dict) -> dict:
        out = []
        for spec in batch["part"]:
            p = json.loads(spec)
            out.append(
                json.dumps(write_part(self.process, Part(p["name"], p["spec"]), self.work_dir, self.secrets))
            )
        return {"record": out}


def _run_in_task(batch: dict, factory, work_dir: str, secrets: dict[str, str]) -> dict:
    return _Runner(factory, work_dir, secrets)(batch)


def committed(work_dir: str) -> dict[str, dict]:
    """Commit records already in the work directory, by part name."""
    files = storage.list_files(storage.join(work_dir, COMMITS), suffix=".json")
    if not files:
        return {}
    with ThreadPoolExecutor(16) as pool:  # small reads; on object storage each is a round trip
        recs = list(pool.map(storage.read_json, files))
    return {r["name"]: r for r in recs if r}


def run_parts(
    parts: list[Part],
    factory: Callable[[], Process],
    work_dir: str,
    secrets: dict[str, str] | None = None,
    actors: int | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
) -> PartsResult:
    """Run every part not yet committed in `work_dir`, one Ray task per part (or an actor pool of
    `actors` actors, for a `factory` that loads models; `num_gpus` each for one that holds an engine),
    and total the commit records of all parts.

    `factory()` is called where the parts run and returns the function that computes one part."""
    import ray.data

    names = [p.name for p in parts]
    if len(set(names)) != len(names):
        raise RuntimeError("parts must have unique names")
    done = committed(work_dir)
    todo = [p for p in parts if p.name not in done]
    reused = len(parts) - len(todo)
    if reused:
        logger.info("%s: %d of %d parts committed by an earlier run: reused", work_dir, reused, len(parts))
    records = dict(done)
    if todo:
        items = [{"part": json.dumps({"name": p.name, "spec": p.spec})} for p in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        kwargs = dict(batch_size=1, num_cpus=num_cpus, zero_copy_batch=True)
        if num_gpus:
            kwargs["num_gpus"] = num_gpus
        if actors:
            ds = ds.map_batches(
                _Runner,
                fn_constructor_kwargs=dict(factory=factory, work_dir=work_dir, secrets=secrets or {}),
                compute=ray.data.ActorPoolStrategy(size=min(actors, len(todo))),
                **kwargs,
            )
        else:
            ds = ds.map_batches(
                _run_in_task,
                fn_kwargs=dict(factory=factory, work_dir=work_dir, secrets=secrets or {}),
                **kwargs,
            )
        for row in ds.iter_rows():
            r = json.loads(row["record"])
            records[r["name"]] = r
    total = PartsResult(parts=len(parts), parts_reused=reused)
    for name in names:
        r = records[name]
        total.docs_in += r["docs_in"]
        total.docs_out += r["docs_out"]
        total.words += r["words"]
        for k, v in r["dropped"].items():
            total.dropped[k] = total.dropped.get(k, 0) + v
        total.stats.append(r["stats"])
    total.dropped = dict(sorted(total.dropped.items()))
    return total


def upstream_parts(stage_dir: str, max_rows: int = PART_ROWS) -> list[Part]:
    """Parts over an upstream stage's kept Parquet files: consecutive row groups of one file, up to
    `max_rows` rows (at least one row group). Read from the files' footers, so the plan is the same for
    the same upstream output, whoever computes it."""
    files = storage.list_files(stage_dir, suffix=".parquet")

    def groups(uri: str) -> list[int]:
        fs, path = storage.resolve(uri)
        with fs.open_input_file(path) as f:
            md = pq.ParquetFile(f).metadata
        return [md.row_group(i).num_rows for i in range(md.num_row_groups)]

    with ThreadPoolExecutor(16) as pool:
        layouts = list(pool.map(groups, files))
    parts = []
    for uri, rows in zip(files, layouts):
        stem = posixpath.basename(uri)[: -len(".parquet")].removeprefix("part-")
        runs: list[list[int]] = []
        for i, n in enumerate(rows):
            if not runs or sum(rows[j] for j in runs[-1]) + n > max_rows:
                runs.append([])
            runs[-1].append(i)
        if not runs:
            runs = [[]]  # a file with no row group: still a part, so the empty input is typed downstream
        for k, rgs in enumerate(runs):
            name = stem if len(runs) == 1 else f"{stem}.{k:04d}"
            parts.append(Part(name, {"file": uri, "row_groups": rgs}))
    return parts


def schema_of(todo: list[Part]) -> pa.Schema:
    """The Arrow schema of the upstream files these parts read (the first one's footer)."""
    if not todo:
        raise RuntimeError("no parts")
    fs, path = storage.resolve(todo[0].spec["file"])
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).schema_arrow


def read_part(spec: dict, columns: list[str] | None = None, batch_rows: int = READ_BATCH_ROWS):
    """Batches (pa.Table) of an upstream part (see `upstream_parts`), streamed; always at least one, so
    an empty part yields its typed empty table."""
    fs, path = storage.resolve(spec["file"])
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        yielded = False
        if spec["row_groups"]:
            for b in pf.iter_batches(batch_size=batch_rows, row_groups=spec["row_groups"], columns=columns):
                yielded = True
                yield pa.Table.from_batches([b])
        if not yielded:
            schema = pf.schema_arrow
            if columns is not None:
                schema = pa.schema([schema.field(c) for c in columns])
            yield schema.empty_table()


def _write_block(table: pa.Table, work_dir: str, secrets: dict[str, str]) -> pa.Table:
    if not table.num_rows:
        return pa.table({"record": pa.array([], pa.string())})
    name = f"b{uuid.uuid4().hex[:16]}"
    rec = write_part(lambda spec, stats: iter([table]), Part(name, {}), work_dir, secrets)
    return pa.table({"record": [json.dumps(rec)]})


def write_dataset(
    docs: "ray.data.Dataset", work_dir: str, secrets: dict[str, str] | None = None
) -> PartsResult:
    """Write a Ray Dataset of documents (a stage's, or synth's after dedup) in one pass: each block
    is written, counted and committed by the task that computes it, and the driver gets one small record
    per block. Not resumable by part (the blocks are not a function of the input); whatever an earlier
    attempt wrote is removed first."""
    for sub in (COMMITS, DROPPED):
        storage.remove_dir(storage.join(work_dir, sub))
    for f in storage.list_files(work_dir, suffix=".parquet"):
        storage.remove_file(f)
    out = docs.map_batches(
        _write_block,
        batch_size=None,
        batch_format="pyarrow",
        fn_kwargs=dict(work_dir=work_dir, secrets=secrets or {}),
    )
    total = PartsResult()
    for row in out.iter_rows():
        r = json.loads(row["record"])
        total.parts += 1
        total.docs_in += r["docs_in"]
        total.docs_out += r["docs_out"]
        total.words += r["words"]
        for k, v in r["dropped"].items():
            total.dropped[k] = total.dropped.get(k, 0) + v
    total.dropped = dict(sorted(total.dropped.items()))
    if not total.parts:  # keep a typed file, so the next stage reads an empty input, not none
        schema = docs.schema()
        schema = schema.base_schema if schema is not None and hasattr(schema, "base_schema") else schema
        base = schema if isinstance(schema, pa.Schema) else DOC_WITH_DROP_SCHEMA
        fs, path = storage.resolve(kept_file(work_dir, "empty"))
        fs.create_dir(posixpath.dirname(path), recursive=True)
        pq.write_table(
            pa.schema([f for f in base if f.name not in DROP_COLUMNS]).empty_table(), path, filesystem=fs
        )
    return total
