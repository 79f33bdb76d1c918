"""Stage `ingest`: raw files to documents with stable ids; bad records counted and kept aside."""

from __future__ import annotations

import glob
import json
import os
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import UserError
from pipeline.schema import DOC_WITH_DROP_SCHEMA
from pipeline.stage import Stage, StageContext, StageOutput
from pipeline.stages.ingest.config import IngestConfig
from pipeline.stages.ingest.count import count_records
from pipeline.stages.ingest.extract import extract_html
from pipeline.stages.ingest.readers import InputFile, read_jsonl, read_parquet, read_warc

if TYPE_CHECKING:
    import ray.data

WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz", ".arc", ".arc.gz")
JSONL_SUFFIXES = tuple(s + c for s in (".jsonl", ".json", ".ndjson") for c in ("", ".gz", ".zst", ".bz2"))
RAW_SCHEMA = DOC_WITH_DROP_SCHEMA.insert(2, pa.field("html", pa.large_string()))
STATS = "__file_stats__"  # one row per file carrying what its reader saw beyond its rows
# reasons of a file that could not be read to its end: no independent count is compared for it
DAMAGED = ("bad_file", "truncated_file", "truncated_record", "bad_warc_record")


def _format_of(path: str, declared: str) -> str | None:
    if declared != "auto":
        return declared
    low = path.lower()
    if low.endswith(WARC_SUFFIXES):
        return "warc"
    if low.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if low.endswith(".parquet"):
        return "parquet"
    return None


def expand_inputs(cfg: IngestConfig, unknown: list[str] | None = None) -> list[InputFile]:
    """Every input file, sorted, with its format. In a directory, files of unknown format are listed in
    `unknown` and skipped; a named file of unknown format is a user error. (A Parquet file without the text
    column is set aside by its reader, so the other files go on.)"""
    files = []
    for inp in cfg.inputs:
        if "://" in inp.path:
            import fsspec

            fs, root = fsspec.core.url_to_fs(inp.path)
            proto = inp.path.split("://", 1)[0]
            found = [f"{proto}://{p}" for p in (fs.find(root) if fs.isdir(root) else fs.glob(root))]
            base = inp.path if fs.isdir(root) else os.path.dirname(inp.path)
        else:
            if os.path.isdir(inp.path):
                base, pattern = inp.path, os.path.join(inp.path, "**")
            else:  # a file or a glob
                base, pattern = os.path.dirname(inp.path), inp.path
            matches = [inp.path] if os.path.isfile(inp.path) else glob.glob(pattern, recursive=True)
            found = [p for p in matches if os.path.isfile(p)]
        for path in sorted(found):
            fmt = _format_of(path, inp.format)
            if fmt is None:
                if path == inp.path:
                    raise UserError(
                        f"ingest.inputs: cannot tell the format of '{path}'; set 'format' for this input"
                    )
                if unknown is not None:
                    unknown.append(path)  # licences and READMEs live beside the data
                continue
            rel = os.path.relpath(path, base) if "://" not in path else path[len(base) :].lstrip("/")
            f = InputFile(
                path,
                rel or os.path.basename(path),
                inp.source,
                fmt,
                inp.text_field,
                inp.id_field,
                inp.url_field,
            )
            files.append(f)
    if not files:
        raise UserError("ingest.inputs: the configured paths contain no input files")
    return files


def _read_files(batch: dict, max_doc_bytes: int, max_html_bytes: int, count: bool, chunk: int = 256):
    """Ray task: read the files of this batch, yielding Arrow tables of `chunk` rows to bound memory, and
    per file a stats row: its rows, non-document WARC records, repairs, and its records counted apart."""
    for spec in batch["spec"]:
        f = InputFile(**json.loads(spec))
        stats: dict = {"skipped": {}, "repaired": {}}
        if f.format == "warc":
            rows = read_warc(f, max_html_bytes, stats)
        elif f.format == "jsonl":
            rows = read_jsonl(f, max_doc_bytes, stats)
        else:
            rows = read_parquet(f, max_doc_bytes, stats)
        buf, n, damaged = [], 0, []
        for r in rows:
            for rule in r.pop("_repaired"):
                stats["repaired"][rule] = stats["repaired"].get(rule, 0) + 1
            if r["drop_reason"] in DAMAGED:
                damaged.append(r["drop_reason"])
            buf.append(r)
            n += 1
            if len(buf) >= chunk:
                yield pa.Table.from_pylist(buf, schema=RAW_SCHEMA)
                buf = []
        stats.update(
            path=f.path, rows=n, damaged=sorted(set(damaged)), counted=count_records(f) if count else None
        )
        buf.append(
            {"id": f"{STATS}/{f.rel}", "source": f.source, "drop_reason": STATS, "meta": json.dumps(stats)}
        )
        yield pa.Table.from_pylist(buf, schema=RAW_SCHEMA)


def check_counts(file_stats: list[dict]) -> dict:
    """The records each reader gave against the records counted apart (count.py); a difference in a file
    read to its end is a reader losing or inventing records, which fails the stage naming the file."""
    for s in file_stats:
        seen = s["rows"] + sum(s["skipped"].values())
        if s["counted"] is not None and not s["damaged"] and s["counted"] != seen:
            raise RuntimeError(
                f"ingest: the reader of {s['path']} gave {s['rows']} rows and {sum(s['skipped'].values())} "
                f"other WARC records, but the file holds {s['counted']} records"
            )
    return {
        "files_checked": sum(s["counted"] is not None and not s["damaged"] for s in file_stats),
        "files_damaged": sorted(s["path"] for s in file_stats if s["damaged"]),
        "files_empty": sorted(s["path"] for s in file_stats if not s["rows"] and not s["skipped"]),
    }


def _check_text(batch: pa.Table, max_doc_bytes: int, min_chars: int) -> pa.Table:
    rows = batch.to_pylist()
    for r in rows:
        if r["drop_reason"] is not None:
            continue
        text = (r["text"] or "").strip()
        if len(text) < min_chars:
            r["drop_reason"], r["drop_detail"] = (
                "empty_text",
                f"{r['meta']}: {len(text)} chars after extraction",
            )
        elif len(text) * 4 > max_doc_bytes and (size := len(text.encode())) > max_doc_bytes:
            r["drop_reason"] = "too_large"
            r["drop_detail"] = f"{r['meta']}: {size} bytes > limit {max_doc_bytes}; kept aside truncated"
            r["text"] = text[:65_536]
    return pa.Table.from_pylist(rows, schema=batch.schema)


def _kept_rows(batch: pa.Table, columns: list[str], ids: list[str] | None = None) -> pa.Table:
    keep = pc.is_null(batch["drop_reason"])
    if ids is not None:
        keep = pc.and_(keep, pc.is_in(batch["id"], pa.array(ids, pa.string())))
    return batch.filter(keep).select(columns)


def _place(meta: str) -> tuple:
    """A record's place, for choosing which of several with one id is kept: the first in file order."""
    m = json.loads(meta)
    kind, _, n = m["pos"].partition(" ")
    return (m["file"], kind, int(n) if n.isdigit() else 0)


def _drop_duplicates(batch: pa.Table, keeper: dict[str, str]) -> pa.Table:
    rows = batch.to_pylist()
    for r in rows:
        first = keeper.get(r["id"])
        if r["drop_reason"] is None and first is not None and r["meta"] != first:
            r["drop_reason"] = "duplicate_id"
            r["drop_detail"] = f"{r['meta']}: id {r['id']} is already the id of {first}"[:2000]
    return pa.Table.from_pylist(rows, schema=batch.schema)


def _repeated(counts: pa.Table) -> pa.Table:
    return counts.filter(pc.greater(counts["count()"], 1))


def mark_duplicate_ids(ds: "ray.data.Dataset") -> tuple["ray.data.Dataset", int]:
    """Records that carry an id already given to another (a JSONL id, a WARC-Record-ID) are dropped as
    `duplicate_id`, except the first in file order, so every later stage can key on the id and the choice
    does not depend on scheduling. Returns the dataset and how many ids were duplicated."""
    ids = ds.map_batches(_kept_rows, fn_kwargs=dict(columns=["id"]), batch_format="pyarrow")
    counts = ids.groupby("id").count().map_batches(_repeated, batch_format="pyarrow")
    dup = [r["id"] for r in counts.take_all()]
    if not dup:
        return ds, 0
    places = ds.map_batches(
        _kept_rows, fn_kwargs=dict(columns=["id", "meta"], ids=dup), batch_format="pyarrow"
    )
    keeper: dict[str, str] = {}
    for r in places.take_all():
        if r["id"] not in keeper or _place(r["meta"]) < _place(keeper[r["id"]]):
            keeper[r["id"]] = r["meta"]
    return ds.map_batches(_drop_duplicates, fn_kwargs=dict(keeper=keeper), batch_format="pyarrow"), len(dup)


def _stats_rows(batch: pa.Table, keep: bool) -> pa.Table:
    is_stats = pc.fill_null(pc.equal(batch["drop_reason"], STATS), False)
    return batch.filter(is_stats if keep else pc.invert(is_stats))


def run(ctx: StageContext) -> StageOutput:
    import ray

    cfg: IngestConfig = ctx.section
    unknown: list[str] = []
    files = expand_inputs(cfg, unknown)
    specs = [{"spec": json.dumps(f.__dict__)} for f in files]
    ds = (
        ray.data.from_items(specs, override_num_blocks=len(specs))
        # Reading is light (decompression, parsing); a different CPU share keeps Ray from fusing it with the
        # extraction below, so extraction, the slow part, spreads over all workers even when one file
        # dominates.
        .map_batches(
            _read_files,
            batch_size=1,
            num_cpus=0.5,
            fn_kwargs=dict(
                max_doc_bytes=cfg.max_doc_bytes, max_html_bytes=cfg.max_html_bytes, count=cfg.count_inputs
            ),
        )
        .repartition(target_num_rows_per_block=16)
        .map_batches(
            extract_html,
            fn_kwargs=dict(favour_precision=cfg.favour_precision, timeout=cfg.extract_timeout),
            batch_format="pyarrow",
        )
        .map_batches(
            _check_text,
            batch_format="pyarrow",
            fn_kwargs=dict(max_doc_bytes=cfg.max_doc_bytes, min_chars=cfg.min_text_chars),
        )
        .materialize()
    )
    file_stats = [
        json.loads(row["meta"])
        for row in ds.map_batches(_stats_rows, fn_kwargs=dict(keep=True), batch_format="pyarrow").take_all()
    ]
    skipped: dict[str, int] = {}
    repaired: dict[str, int] = {}
    for st in file_stats:
        for total, part in ((skipped, st["skipped"]), (repaired, st["repaired"])):
            for k, v in part.items():
                total[k] = total.get(k, 0) + v
    docs, duplicated = mark_duplicate_ids(ds)
    docs = docs.map_batches(_stats_rows, fn_kwargs=dict(keep=False), batch_format="pyarrow")
    return StageOutput(
        docs,
        # counted by the readers, before extraction and checks: the runner compares it with what is written
        docs_in=sum(st["rows"] for st in file_stats),
        details={
            "files": len(files),
            "files_skipped_unknown_format": unknown,
            "non_document_warc_records": skipped,
            "repaired": dict(sorted(repaired.items())),
            "ids_duplicated": duplicated,
            **(check_counts(file_stats) if cfg.count_inputs else {}),
        },
    )


def input_files(config) -> list[str]:
    """Input files by name, size and modification time: a changed or added file reruns ingest."""
    return [f.path for f in expand_inputs(config.ingest)]


STAGE = Stage("ingest", run, outside_files=input_files)
