"""Read raw files (WARC/ARC/WET, JSONL, Parquet) into document rows, keeping every bad record with a reason.

Written here rather than with datatrove's readers because those skip bad and non-HTML records
silently and do not report file offsets; we need each bad record counted and kept aside with
its file and position. warcio, fsspec and pyarrow still do the parsing.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import fsspec
import pyarrow.parquet as pq
from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed

from pipeline.schema import stable_id

HTML_TYPES = ("text/html", "application/xhtml+xml")
DOC_RECORD_TYPES = ("response", "resource", "conversion")  # a WARC record of these types carries a document
PREVIEW_CHARS = 65_536  # a too-large document is kept aside with this much of its text


@dataclass(frozen=True)
class InputFile:
    path: str  # local path or URL
    rel: str  # path relative to the configured input, part of the stable id
    source: str
    format: str  # warc | jsonl | parquet
    text_field: str = "text"
    id_field: str | None = "id"
    url_field: str | None = "url"


def _row(
    f: InputFile,
    pos: str,
    given_id: str | None = None,
    *,
    text=None,
    html=None,
    url=None,
    meta=None,
    reason=None,
    detail=None,
) -> dict:
    return {
        "id": stable_id(f.source, given_id) if given_id else stable_id(f.source, f.rel, pos),
        "text": text,
        "html": html,
        "source": f.source,
        "url": url,
        "meta": json.dumps({"file": f.rel, "pos": pos, **(meta or {})}, ensure_ascii=False, default=str),
        "drop_reason": reason,
        "drop_detail": detail,
    }


def _too_large(f: InputFile, pos: str, given: str | None, text: str, size: int, limit: int, **kw) -> dict:
    return _row(
        f,
        pos,
        given,
        text=text[:PREVIEW_CHARS],
        reason="too_large",
        detail=f"{f.path} {pos}: {size} bytes > limit {limit}; kept aside truncated to {PREVIEW_CHARS} chars",
        **kw,
    )


def read_jsonl(f: InputFile, max_doc_bytes: int) -> Iterator[dict]:
    """One document per line; .gz/.zst/.bz2 decompressed by fsspec from the file name."""
    line_no = 0
    try:
        with _open_decompressed(f.path) as fh:
            for line_no, raw in enumerate(fh, start=1):
                pos = f"line {line_no}"
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield _row(
                        f,
                        pos,
                        text=raw.decode("utf-8", "replace")[:PREVIEW_CHARS],
                        reason="bad_utf8",
                        detail=f"{f.path} {pos}: invalid UTF-8 at byte {e.start}",
                    )
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    yield _row(
                        f, pos, text=line[:PREVIEW_CHARS], reason="bad_json", detail=f"{f.path} {pos}: {e}"
                    )
                    continue
                if not isinstance(rec, dict) or not isinstance(rec.get(f.text_field), str):
                    yield _row(
                        f,
                        pos,
                        text=line[:PREVIEW_CHARS],
                        reason="bad_json",
                        detail=f"{f.path} {pos}: expected an object with a string field '{f.text_field}'",
                    )
                    continue
                yield _doc_from_mapping(f, pos, rec, max_doc_bytes)
    except (EOFError, zlib.error, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        yield _row(
            f,
            f"line {line_no + 1}",
            reason="truncated_file",
            detail=f"{f.path}: unreadable after line {line_no}: {e}",
        )


@contextmanager
def _open_decompressed(path: str):
    """A line-iterable binary stream; zstd handled here because fsspec's zstd reader cannot iterate lines
    and stops after the first frame."""
    with fsspec.open(path, "rb", compression=None if path.endswith(".zst") else "infer") as raw:
        if path.endswith(".zst"):
            import zstandard

            yield io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
        else:
            yield raw


def _doc_from_mapping(f: InputFile, pos: str, rec: dict, max_doc_bytes: int) -> dict:
    text = rec[f.text_field]
    given = rec.get(f.id_field) if f.id_field else None
    url = rec.get(f.url_field) if f.url_field else None
    meta = {k: v for k, v in rec.items() if k not in (f.text_field, f.id_field, f.url_field)}
    kw = dict(url=str(url) if url is not None else None, meta=meta)
    given = str(given) if given not in (None, "") else None
    if len(text) * 4 > max_doc_bytes and (size := len(text.encode("utf-8", "replace"))) > max_doc_bytes:
        return _too_large(f, pos, given, text, size, max_doc_bytes, **kw)
    return _row(f, pos, given, text=text, **kw)


def read_parquet(f: InputFile, max_doc_bytes: int) -> Iterator[dict]:
    pf = pq.ParquetFile(fsspec.open(f.path, "rb").open())
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for rec in batch.to_pylist():
            pos = f"row {row}"
            row += 1
            if not isinstance(rec.get(f.text_field), str):
                yield _row(f, pos, reason="empty_text", detail=f"{f.path} {pos}: '{f.text_field}' is null")
                continue
            yield _doc_from_mapping(f, pos, rec, max_doc_bytes)


_CHARSET = re.compile(r"charset=[\"']?([\w.:-]+)", re.I)


def _decode_html(payload: bytes, content_type: str) -> str:
    """Declared charset first, then UTF-8, then trafilatura's detection (real crawls mislabel pages)."""
    m = _CHARSET.search(content_type)
    for enc in ([m.group(1)] if m else []) + ["utf-8"]:
        try:
            return payload.decode(enc)
        except (UnicodeDecodeError, LookupError):
            pass
    from trafilatura.utils import decode_file

    return decode_file(payload)


def read_warc(f: InputFile, max_html_bytes: int, skipped: dict[str, int]) -> Iterator[dict]:
    """Response/resource/conversion records become documents; other record types are counted in `skipped`."""
    offset = 0
    try:
        with fsspec.open(f.path, "rb") as fh:  # warcio detects and decompresses gzip members itself
            it = ArchiveIterator(fh, arc2warc=True)
            for record in it:
                if record.rec_type not in DOC_RECORD_TYPES:
                    skipped[record.rec_type] = skipped.get(record.rec_type, 0) + 1
                    offset = it.get_record_offset()
                    continue
                # read the payload before asking for the offset: asking reads to the end
                head = _http_head(record)
                offset = it.get_record_offset()
                yield _warc_doc(f, record, head, f"offset {offset}", max_html_bytes)
    except (ArchiveLoadFailed, EOFError, zlib.error, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        reason = "bad_warc" if isinstance(e, ArchiveLoadFailed) else "truncated_file"
        yield _row(
            f,
            f"after offset {offset}",
            reason=reason,
            detail=f"{f.path}: unreadable after offset {offset}: {type(e).__name__}: {e}"[:2000],
        )


def _http_head(record) -> tuple[int | None, str, bytes]:
    """HTTP status, Content-Type and body of a record. warcio parses HTTP headers only for http(s) target
    URIs, so a response record with another URI scheme still carries its raw header block: parse it here."""
    h = record.rec_headers
    http = record.http_headers
    body = record.content_stream().read()
    if http is not None:
        status = http.get_statuscode() if record.rec_type == "response" else None
        ctype = http.get_header("Content-Type") or ""
    elif record.rec_type == "response" and body.startswith(b"HTTP/"):
        head, _, body = body.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else None
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        ctype = fields.get("content-type", "")
    else:
        status, ctype = None, h.get_header("Content-Type") or ""
    return (
        (int(status) if status and str(status).isdigit() else None),
        h.get_header("WARC-Identified-Payload-Type") or ctype,
        body,
    )


def _warc_doc(f: InputFile, record, head: tuple, pos: str, max_html_bytes: int) -> dict:
    h = record.rec_headers
    url = h.get_header("WARC-Target-URI")
    given = h.get_header("WARC-Record-ID")
    status, ctype, payload = head
    meta = {
        "warc_date": h.get_header("WARC-Date"),
        "warc_type": record.rec_type,
        "http_status": status,
        "content_type": ctype,
    }
    kw = dict(url=url, meta=meta)
    mime = ctype.split(";")[0].strip().lower()
    if status is not None and not 200 <= status < 300:
        return _row(f, pos, given, reason="http_error", detail=f"{f.path} {pos}: HTTP status {status}", **kw)
    is_text = record.rec_type == "conversion" and mime in ("text/plain", "")
    if mime not in HTML_TYPES and not is_text:
        return _row(
            f,
            pos,
            given,
            reason="not_html",
            detail=f"{f.path} {pos}: payload type '{mime or 'unknown'}'",
            **kw,
        )
    if len(payload) > max_html_bytes:
        preview = payload[:PREVIEW_CHARS].decode("utf-8", "replace")
        return _too_large(f, pos, given, preview, len(payload), max_html_bytes, **kw)
    if is_text:
        try:
            return _row(f, pos, given, text=payload.decode("utf-8"), **kw)
        except UnicodeDecodeError as e:
            return _row(
                f,
                pos,
                given,
                text=payload.decode("utf-8", "replace")[:PREVIEW_CHARS],
                reason="bad_utf8",
                detail=f"{f.path} {pos}: invalid UTF-8 at byte {e.start}",
                **kw,
            )
    return _row(f, pos, given, html=_decode_html(payload, ctype), **kw)
