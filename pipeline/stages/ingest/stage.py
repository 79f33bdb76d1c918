"""Stage `ingest`: raw files to documents with stable ids; bad records counted and kept aside."""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import re
from typing import Iterator

import pyarrow as pa

from pipeline import redact
from pipeline.errors import UserError
from pipeline.parts import Part
from pipeline.schema import DOC_WITH_DROP_SCHEMA
from pipeline.stage import Stage, StageContext, StageOutput
from pipeline.stages.ingest import duplicates
from pipeline.stages.ingest.config import IngestConfig
from pipeline.stages.ingest.count import count_records
from pipeline.stages.ingest.extract import extract_row
from pipeline.stages.ingest.readers import InputFile, read_jsonl, read_parquet, read_warc

WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz", ".arc", ".arc.gz")
JSONL_SUFFIXES = tuple(s + c for s in (".jsonl", ".json", ".ndjson") for c in ("", ".gz", ".zst", ".bz2"))
# reasons of a file that could not be read to its end: no independent count is compared for it
DAMAGED = ("bad_file", "truncated_file", "truncated_record", "bad_warc_record")
# A small input is still cut into about MIN_PARTS parts, so that no core idles while one works through a
# whole file at the end (the demo's 16 MB WARC file as one part held one core for most of the run); parts
# stay at least MIN_PART_BYTES, so the fixed cost of a part (its task, its commit, the walk to its range)
# stays small. Both depend on the input alone: a rerun on another cluster finds the same parts.
MIN_PARTS = 32
MIN_PART_BYTES = 2 * 2**20


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
            listed = fs.find(root, detail=True) if fs.isdir(root) else fs.glob(root, detail=True)
            sizes = {f"{proto}://{p}": info.get("size") for p, info in listed.items()}
            found = list(sizes)
            base = inp.path if fs.isdir(root) else os.path.dirname(inp.path)
        else:
            if os.path.isdir(inp.path):
                base, pattern = inp.path, os.path.join(inp.path, "**")
            else:  # a file or a glob
                base, pattern = os.path.dirname(inp.path), inp.path
            matches = [inp.path] if os.path.isfile(inp.path) else glob.glob(pattern, recursive=True)
            found = [p for p in matches if os.path.isfile(p)]
            sizes = {p: os.path.getsize(p) for p in found}
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
                sizes.get(path),
            )
            files.append(f)
    if not files:
        raise UserError("ingest.inputs: the configured paths contain no input files")
    return files


def _pieces(f: InputFile, part_bytes: int) -> int:
    """How many parts a file is cut into: by size, except a compressed JSONL file (a compressed stream
    cannot be entered in the middle, and JSONL needs no extraction, so one task keeps up) and an ARC file."""
    splittable = f.format in ("warc", "parquet") or f.path.lower().endswith((".jsonl", ".json", ".ndjson"))
    if not f.size or not splittable or f.path.lower().endswith((".arc", ".arc.gz")):
        return 1
    return -(-f.size // part_bytes)


def part_size(files: list[InputFile], part_bytes: int) -> int:
    """`part_bytes`, or less for an input under MIN_PARTS x `part_bytes` (down to MIN_PART_BYTES)."""
    total = sum(f.size or 0 for f in files)
    return min(part_bytes, max(MIN_PART_BYTES, -(-total // MIN_PARTS)))


def plan(files: list[InputFile], part_bytes: int) -> list[Part]:
    """One part per input file, in file order; a file over `part_size` is cut into consecutive byte ranges
    (Parquet: row groups), each part reading the records that start in its range. A function of the files
    and the config only, so a rerun finds the parts an earlier run committed."""
    part_bytes = part_size(files, part_bytes)
    parts = []
    for i, f in enumerate(files):
        k = _pieces(f, part_bytes)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f.rel)[-80:]
        for j in range(k):
            name = f"{i:05d}-{slug}" + (f".{j:03d}" if k > 1 else "")
            spec = {"part": name, "file": dataclasses.asdict(f), "index": i, "sub": j, "of": k}
            if k > 1 and f.format != "parquet":
                spec.update(lo=f.size * j // k, hi=f.size * (j + 1) // k if j < k - 1 else None)
            parts.append(Part(name, spec))
    return parts


def check_text(r: dict, max_doc_bytes: int, min_chars: int) -> None:
    """Drop a document with (almost) no text, or one over `max_doc_bytes` (kept aside truncated)."""
    text = (r["text"] or "").strip()
    if len(text) < min_chars:
        r["drop_reason"], r["drop_detail"] = "empty_text", f"{r['meta']}: {len(text)} chars after extraction"
    elif len(text) * 4 > max_doc_bytes and (size := len(text.encode())) > max_doc_bytes:
        r["drop_reason"] = "too_large"
        r["drop_detail"] = f"{r['meta']}: {size} bytes > limit {max_doc_bytes}; kept aside truncated"
        r["text"] = text[:65_536]


def _ingester(cfg: IngestConfig, work_dir: str, n_buckets: int, secrets: dict[str, str], chunk: int = 256):
    """The part function: read one part of a file, extract each page and check each text in this
    process, and yield tables of `chunk` documents. No HTML leaves the task; memory is one page, one
    chunk of texts and the part's kept ids. The part's stats are what its reader saw: rows, non-document
    WARC records, repairs, damage, and (first part of a file) the file's records counted apart. Its kept
    ids go to `_ids/` for the duplicate-id pass (duplicates.py) before the part is committed."""

    def process(spec: dict, stats: dict) -> Iterator[pa.Table]:
        f = InputFile(**spec["file"])
        seen: dict = {"skipped": {}, "repaired": {}}
        if f.format == "warc":
            rows = read_warc(f, cfg.max_html_bytes, seen, spec.get("lo", 0), spec.get("hi"))
        elif f.format == "jsonl":
            rows = read_jsonl(f, cfg.max_doc_bytes, seen, spec.get("lo", 0), spec.get("hi"))
        else:
            rows = read_parquet(f, cfg.max_doc_bytes, seen, spec["sub"], spec["of"])
        buf, n, damaged, ids, places = [], 0, set(), [], []
        for r in rows:
            n += 1
            place = r.pop("_place")
            for rule in r.pop("_repaired"):
                seen["repaired"][rule] = seen["repaired"].get(rule, 0) + 1
            html = r.pop("html")
            if r["drop_reason"] is None:
                if html is not None:
                    extract_row(r, html, cfg.favour_precision, cfg.extract_timeout)
                if r["drop_reason"] is None:
                    check_text(r, cfg.max_doc_bytes, cfg.min_text_chars)
            elif r["drop_reason"] in DAMAGED:
                damaged.add(r["drop_reason"])
            if r["drop_reason"] is None:
                ids.append(r["id"])
                places.append(redact.redact_text(place, secrets) if secrets else place)
            buf.append(r)
            if len(buf) >= chunk:
                yield pa.Table.from_pylist(buf, schema=DOC_WITH_DROP_SCHEMA)
                buf = []
        counted = count_records(f) if cfg.count_inputs and spec["sub"] == 0 else None
        duplicates.write_ids(work_dir, spec["part"], ids, places, n_buckets)
        stats.update(
            docs_in=n,  # what the reader gave, against what the writer counts
            file=spec["index"],
            path=f.path,
            rows=n,
            damaged=sorted(damaged),
            counted=counted,
            **seen,
        )
        yield pa.Table.from_pylist(buf, schema=DOC_WITH_DROP_SCHEMA)  # the last, maybe empty and typed

    return process


def file_stats(part_stats: list[dict]) -> list[dict]:
    """Per file, the figures of its parts added up (O(files))."""
    by_file: dict[int, dict] = {}
    for s in part_stats:
        t = by_file.setdefault(
            s["file"], {"path": s["path"], "rows": 0, "skipped": {}, "repaired": {}, "damaged": []}
        )
        t["rows"] += s["rows"]
        t["damaged"] = sorted(set(t["damaged"]) | set(s["damaged"]))
        t["counted"] = t.get("counted") if s["counted"] is None else s["counted"]
        for key in ("skipped", "repaired"):
            for k, v in s[key].items():
                t[key][k] = t[key].get(k, 0) + v
    return [by_file[i] for i in sorted(by_file)]


def check_counts(file_stats: list[dict]) -> dict:
    """The records each reader gave against the records counted apart (count.py); a difference in a file
    read to its end is a reader losing or inventing records, which fails the stage naming the file."""
    for s in file_stats:
        seen = s["rows"] + sum(s["skipped"].values())
        if s.get("counted") is not None and not s["damaged"] and s["counted"] != seen:
            raise RuntimeError(
                f"ingest: the reader of {s['path']} gave {s['rows']} rows and {sum(s['skipped'].values())} "
                f"other WARC records, but the file holds {s['counted']} records"
            )
    return {
        "files_checked": sum(s.get("counted") is not None and not s["damaged"] for s in file_stats),
        "files_damaged": sorted(s["path"] for s in file_stats if s["damaged"]),
        "files_empty": sorted(s["path"] for s in file_stats if not s["rows"] and not s["skipped"]),
    }


def run(ctx: StageContext) -> StageOutput:
    cfg: IngestConfig = ctx.section
    unknown: list[str] = []
    files = expand_inputs(cfg, unknown)
    todo = plan(files, cfg.part_bytes)
    n_buckets = duplicates.buckets_for(len(todo))
    # largest parts first, so the last ones to finish are small and no core idles long at the end
    by_size = sorted(todo, key=lambda p: -(p.spec["file"]["size"] or 0) / p.spec["of"])
    first = ctx.run_parts(by_size, functools.partial(_ingester, cfg, ctx.work_dir, n_buckets, ctx.secrets))
    res, rewritten = duplicates.mark_duplicate_ids(todo, ctx.work_dir, ctx.secrets, first.parts_reused)
    stats = file_stats(res.stats)
    skipped: dict[str, int] = {}
    repaired: dict[str, int] = {}
    for st in stats:
        for total, part in ((skipped, st["skipped"]), (repaired, st["repaired"])):
            for k, v in part.items():
                total[k] = total.get(k, 0) + v
    return StageOutput(
        parts=res,
        # counted by the readers, before extraction and checks: the runner compares it with what is written
        docs_in=sum(st["rows"] for st in stats),
        details={
            "files": len(files),
            "files_skipped_unknown_format": unknown,
            "non_document_warc_records": dict(sorted(skipped.items())),
            "repaired": dict(sorted(repaired.items())),
            "parts_rewritten_for_duplicate_ids": rewritten,
            **(check_counts(stats) if cfg.count_inputs else {}),
        },
    )


def input_files(config) -> list[str]:
    """Input files by name, size and modification time: a changed or added file reruns ingest."""
    return [f.path for f in expand_inputs(config.ingest)]


STAGE = Stage("ingest", run, outside_files=input_files, resumes=True)
