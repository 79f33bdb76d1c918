"""Read raw files (WARC/ARC/WET, JSONL, Parquet) into document rows, keeping every bad record with a reason.

Written here rather than with datatrove's readers because those skip bad and non-HTML records
silently and do not report file offsets; we need each bad record counted and kept aside with
its file and position. warcio, fsspec and pyarrow still do the parsing.

Rules for hostile input (each repair is listed in the row's meta `repaired` and counted per file):
- a lone surrogate (U+D800..U+DFFF, e.g. half of an emoji escaped in JSON) in any field becomes U+FFFD, and a
  NUL character is removed: neither can be text, and the first cannot be stored as UTF-8;
- a UTF-8 byte-order mark at the start of a JSONL file is removed; CRLF line ends are accepted as they are;
- a JSONL line of invalid UTF-8, invalid or too deeply nested JSON, or without a string text field is
  dropped (`bad_utf8`, `bad_json`); a line over `line_cap` bytes is dropped unparsed (`too_large`);
- any other failure of one record is dropped as `bad_record`; a file that cannot be opened is one
  `bad_file` row, and one readable only in part keeps its readable records and adds a `truncated_file` row;
- a WARC record shorter than its Content-Length (a cut file or gzip member) is `truncated_record`, one whose
  Content-Length does not end where the record ends, or whose header or gzip member cannot be read, is
  `bad_warc_record`, both at the offset where the damaged record starts; reading resumes at the next record
  start found after it (the next gzip member that decompresses to a WARC header, or the next line
  starting with `WARC/1.`);
- a body declared as HTML that is binary (PDF, images, archives, NUL bytes) is `not_html`.
"""

from __future__ import annotations

import codecs
import io
import json
import re
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import fsspec
import pyarrow.parquet as pq
from warcio.archiveiterator import ArchiveIterator

from pipeline.schema import stable_id

HTML_TYPES = ("text/html", "application/xhtml+xml")
DOC_RECORD_TYPES = ("response", "resource", "conversion")  # a WARC record of these types carries a document
PREVIEW_CHARS = 65_536  # a too-large document is kept aside with this much of its text
GZIP_MAGIC = b"\x1f\x8b\x08"
BINARY_MAGIC = {
    b"%PDF-": "PDF",
    b"\x89PNG": "PNG",
    b"GIF8": "GIF",
    b"\xff\xd8\xff": "JPEG",
    b"PK\x03\x04": "ZIP",
    b"\x1f\x8b": "gzip",
    b"\xd0\xcf\x11\xe0": "OLE (Office)",
}
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class InputFile:
    path: str  # local path or URL
    rel: str  # path relative to the configured input, part of the stable id
    source: str
    format: str  # warc | jsonl | parquet
    text_field: str = "text"
    id_field: str | None = "id"
    url_field: str | None = "url"
    size: int | None = None  # bytes, where known: how many parts the file is cut into


def _owns(at: int, lo: int, hi: int | None) -> bool:
    """Whether a record starting at byte `at` belongs to the part reading [lo, hi) of its file."""
    return lo <= at and (hi is None or at < hi)


def _counters(stats: dict) -> None:
    """The per-file counts a reader fills: non-document WARC records by type, repairs by rule."""
    for key in ("skipped", "repaired"):
        stats.setdefault(key, {})


def _repair(value: str | None, fixed: list[str]) -> str | None:
    """The stated repairs of a string (module docstring); the rules applied are appended to `fixed`."""
    if value is None or not _UNSTORABLE.search(value):
        return value
    if "\x00" in value:
        fixed.append("nul")
        value = value.replace("\x00", "")
    if _SURROGATE.search(value):
        fixed.append("lone_surrogate")
        value = _SURROGATE.sub("\ufffd", value)
    return value


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
    fixed: list[str] = []
    text, html, url, given_id, detail = (_repair(v, fixed) for v in (text, html, url, given_id, detail))
    meta = {"file": f.rel, "pos": pos, **(meta or {})}
    meta_json = _repair(json.dumps(meta, ensure_ascii=False, default=str), fixed)
    if fixed:
        meta_json = _repair(
            json.dumps({**meta, "repaired": sorted(set(fixed))}, ensure_ascii=False, default=str), []
        )
    return {
        "id": stable_id(f.source, given_id) if given_id else stable_id(f.source, f.rel, pos),
        "text": text,
        "html": html,
        "source": f.source,
        "url": url,
        "meta": meta_json,
        "drop_reason": reason,
        "drop_detail": detail,
        "_repaired": sorted(set(fixed)),  # counted per file by the caller, not stored
        "_place": f"{f.rel} {pos}",  # where it is, for the duplicate-id pass; not stored
    }


def _guard(f: InputFile, pos: str, make: Callable[..., dict | None], *args) -> dict | None:
    """One record's row; a failure nobody foresaw drops that record (`bad_record`), never the file."""
    try:
        return make(*args)
    except Exception as e:
        return _row(f, pos, reason="bad_record", detail=f"{f.path} {pos}: {type(e).__name__}: {e}"[:2000])


def _file_failed(f: InputFile, pos: str, rows_read: int, where: str, e: Exception) -> dict:
    return _row(
        f,
        pos,
        reason="truncated_file" if rows_read else "bad_file",
        detail=f"{f.path}: unreadable {where}: {type(e).__name__}: {e}"[:2000],
    )


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


def line_cap(max_doc_bytes: int) -> int:
    """The longest JSONL line parsed: a JSON escape takes up to 6 bytes a character, plus room for fields."""
    return 6 * max_doc_bytes + 65_536


def read_jsonl(
    f: InputFile, max_doc_bytes: int, stats: dict, lo: int = 0, hi: int | None = None
) -> Iterator[dict]:
    """One document per non-blank line; .gz/.zst/.bz2 decompressed by fsspec from the file name. Lines are
    read with a cap, so one huge line costs no more memory than `line_cap`.

    With `lo`/`hi` (plain files only: a compressed stream cannot be entered in the middle), only the lines
    that start in bytes [lo, hi) are read: the reader seeks to the first line start at or after `lo`, its
    line number counted from the newlines before it, and stops at the first line starting at `hi`."""
    _counters(stats)
    cap, line_no, rows, at = line_cap(max_doc_bytes), 0, 0, lo
    try:
        with _open_decompressed(f.path) as fh:
            if lo:
                at, line_no = _line_start(fh, lo)
            while (hi is None or at < hi) and (raw := fh.readline(cap)):
                line_no += 1
                pos, start = f"line {line_no}", at
                at += len(raw)
                if len(raw) == cap and not raw.endswith(b"\n") and (rest := _skip_line(fh)):
                    at += rest
                    rows += 1
                    yield _row(
                        f,
                        pos,
                        text=raw[:PREVIEW_CHARS].decode("utf-8", "replace"),
                        reason="too_large",
                        detail=f"{f.path} {pos}: a line of {cap + rest} bytes > {cap} (6 x max_doc_bytes "
                        f"+ 64 KiB); kept aside unparsed, truncated to {PREVIEW_CHARS} bytes",
                    )
                    continue
                if start == 0 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8) :]
                    stats["repaired"]["bom"] = stats["repaired"].get("bom", 0) + 1
                if not raw.strip():
                    continue
                rows += 1
                yield _guard(f, pos, _jsonl_record, f, pos, raw, max_doc_bytes)
    except Exception as e:  # any decompression or I/O failure is this file's, not the run's
        yield _file_failed(f, f"line {line_no + 1}", rows + lo, f"after line {line_no}", e)


def _line_start(fh, lo: int) -> tuple[int, int]:
    """The offset of the first line that starts at or after `lo`, and how many lines come before it; the
    stream is left there. A line starts after a newline, and a newline in a JSONL file always ends a line
    (JSON strings escape theirs), so this needs no parsing."""
    lines, done = 0, 0
    while done < lo - 1:  # count the newlines in [0, lo - 1)
        chunk = fh.read(min(1 << 20, lo - 1 - done))
        if not chunk:
            return done, lines
        lines += chunk.count(b"\n")
        done += len(chunk)
    while chunk := fh.read(1 << 16):  # the first newline at or after lo - 1 ends the line before ours
        i = chunk.find(b"\n")
        if i >= 0:
            fh.seek(done + i + 1)
            return done + i + 1, lines + 1
        done += len(chunk)
    return done, lines


def _skip_line(fh) -> int:
    """Consume the rest of an over-long line without keeping it; return its length."""
    n = 0
    while chunk := fh.readline(1 << 20):
        n += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return n


def _jsonl_record(f: InputFile, pos: str, raw: bytes, max_doc_bytes: int) -> dict:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return _row(
            f,
            pos,
            text=raw.decode("utf-8", "replace")[:PREVIEW_CHARS],
            reason="bad_utf8",
            detail=f"{f.path} {pos}: invalid UTF-8 at byte {e.start}",
        )
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        return _row(f, pos, text=line[:PREVIEW_CHARS], reason="bad_json", detail=f"{f.path} {pos}: {e}")
    except RecursionError:
        return _row(
            f, pos, text=line[:PREVIEW_CHARS], reason="bad_json", detail=f"{f.path} {pos}: nested too deeply"
        )
    if not isinstance(rec, dict) or not isinstance(rec.get(f.text_field), str):
        return _row(
            f,
            pos,
            text=line[:PREVIEW_CHARS],
            reason="bad_json",
            detail=f"{f.path} {pos}: expected an object with a string field '{f.text_field}'",
        )
    return _doc_from_mapping(f, pos, rec, max_doc_bytes)


@contextmanager
def _open_decompressed(path: str):
    """A line-iterable binary stream whose readline takes a size; zstd handled here (_Zstd)."""
    with fsspec.open(path, "rb", compression=None if path.endswith(".zst") else "infer") as raw:
        # io.BufferedReader: an object store's file object has readline() without a size
        yield io.BufferedReader(_Zstd(raw) if path.endswith(".zst") else raw)


class _Zstd(io.RawIOBase):
    """zstd frames one after another, and an error for a cut one. Hand-written over zstandard's
    decompressobj because its stream_reader ends a cut file silently, as if complete (and fsspec's stops
    after the first frame)."""

    def __init__(self, raw):
        import zstandard

        self.raw, self.new = raw, zstandard.ZstdDecompressor().decompressobj
        self.obj, self.pending, self.started = self.new(), b"", False

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self.pending:
            data = self.raw.read(1 << 16)
            if not data:
                if self.started:
                    raise EOFError("the zstd stream is cut inside a frame")
                return 0
            while data:
                self.started = True
                self.pending += self.obj.decompress(data)
                data = b""
                if self.obj.eof:
                    data, self.obj, self.started = self.obj.unused_data, self.new(), False
        n = min(len(buf), len(self.pending))
        buf[:n], self.pending = self.pending[:n], self.pending[n:]
        return n


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


def read_parquet(f: InputFile, max_doc_bytes: int, stats: dict, sub: int = 0, of: int = 1) -> Iterator[dict]:
    """One document per row. A file that cannot be opened (zero bytes, no footer) or lacks the text column
    is one `bad_file` row (given by the first part of the file only), so the other files go on. Part `sub`
    of `of` reads its share of the row groups: consecutive ones, numbered as in the whole file."""
    _counters(stats)
    row = 0
    try:
        with fsspec.open(f.path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            names = pf.schema_arrow.names
            if f.text_field not in names:
                if sub == 0:
                    yield _row(
                        f,
                        "file",
                        reason="bad_file",
                        detail=f"{f.path}: no column '{f.text_field}' (columns: {', '.join(names)}); set "
                        "text_field for this input",
                    )
                return
            n = pf.metadata.num_row_groups
            groups = [g for g in range(n) if g * of // n == sub]
            row = sum(pf.metadata.row_group(g).num_rows for g in range(groups[0])) if groups else 0
            for batch in pf.iter_batches(batch_size=1024, row_groups=groups) if groups else ():
                for rec in batch.to_pylist():
                    pos = f"row {row}"
                    row += 1
                    yield _guard(f, pos, _parquet_record, f, pos, rec, max_doc_bytes)
    except Exception as e:
        if row or sub == 0:
            yield _file_failed(f, f"row {row}", row, f"from row {row}", e)


def _parquet_record(f: InputFile, pos: str, rec: dict, max_doc_bytes: int) -> dict:
    text = rec.get(f.text_field)
    if text is None:
        return _row(f, pos, reason="empty_text", detail=f"{f.path} {pos}: '{f.text_field}' is null")
    if not isinstance(text, str):
        return _row(
            f, pos, reason="bad_record", detail=f"{f.path} {pos}: '{f.text_field}' is {type(text).__name__}"
        )
    return _doc_from_mapping(f, pos, rec, max_doc_bytes)


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


def _binary_kind(payload: bytes, content_type: str) -> str | None:
    """What a body declared as HTML really is, when it is binary (servers label PDFs and images text/html)."""
    head = payload[:1024].lstrip()
    for magic, kind in BINARY_MAGIC.items():
        if head.startswith(magic):
            return kind
    utf16 = re.search(r"utf-?(16|32)", content_type, re.I) or head[:2] in (b"\xff\xfe", b"\xfe\xff")
    return "binary (NUL bytes)" if b"\x00" in head and not utf16 else None


def read_warc(
    f: InputFile, max_html_bytes: int, stats: dict, lo: int = 0, hi: int | None = None
) -> Iterator[dict]:
    """Response/resource/conversion records become documents; other record types are counted in
    stats["skipped"]. A damaged record is kept aside at its offset and reading resumes after it.

    With `lo`/`hi`, only the records that start in bytes [lo, hi) are read: the file is still walked
    from its start, record by record as warcio frames it, so every part sees the records (and the damaged
    ones, and where reading resumes after them) exactly as one reader of the whole file would; records
    before `lo` are only skipped over (decompressed, not parsed), and the walk stops at `hi`."""
    _counters(stats)
    with fsspec.open(f.path, "rb") as fh:
        gz = fh.read(3) == GZIP_MAGIC
        arc = f.path.lower().endswith((".arc", ".arc.gz"))
        start: int | None = 0
        while start is not None and (hi is None or start < hi):
            resume = yield from _warc_from(f, fh, start, max_html_bytes, stats, lo, hi)
            if resume is not None and hi is not None and resume >= hi:
                break  # the next record starts in the next part
            # a plain ARC has no marker to look for: its rest is lost, with the damaged record's row saying so
            start = (
                _next_record_start(fh, resume, gz, arc) if resume is not None and (gz or not arc) else None
            )


def _warc_from(f: InputFile, fh, start: int, max_html_bytes: int, stats: dict, lo: int, hi: int | None):
    """Records from `start` until the end, `hi`, or the first damaged one; returns where to look for the
    next record start (None at the end)."""
    fh.seek(start)
    it = ArchiveIterator(fh, arc2warc=True)
    offset = start
    try:
        for record in it:
            offset, errors = it.offset, it.err_count
            if hi is not None and offset >= hi:
                return None
            mine = _owns(offset, lo, hi)
            head = None
            if mine and record.rec_type in DOC_RECORD_TYPES:
                try:
                    head = _http_head(record, max_html_bytes)
                except Exception as e:  # e.g. a broken chunked or gzip HTTP body: the framing is still sound
                    head = e
            it.read_to_end()  # the rest of the record, and the blank lines its Content-Length puts after it
            short = getattr(record.raw_stream, "limit", 0)
            pos = f"offset {offset}"
            if short or it.err_count > errors:
                why = (
                    f"{short} bytes shorter than its Content-Length {record.length} (file or gzip member cut)"
                    if short
                    else "its Content-Length does not end where the record ends"
                )
                if mine:
                    yield _row(
                        f,
                        pos,
                        reason="truncated_record" if short else "bad_warc_record",
                        detail=f"{f.path} {pos}: {record.rec_type} record {why}; reading resumes at the "
                        "next record",
                        url=record.rec_headers.get_header("WARC-Target-URI"),
                    )
                return offset + 1
            if not mine:
                continue
            if head is None:
                stats["skipped"][record.rec_type] = stats["skipped"].get(record.rec_type, 0) + 1
                continue
            if isinstance(head, Exception):
                yield _row(
                    f, pos, reason="bad_record", detail=f"{f.path} {pos}: {type(head).__name__}: {head}"
                )
            else:
                yield _guard(f, pos, _warc_doc, f, record, head, pos, max_html_bytes)
    except Exception as e:  # an unreadable header or gzip member: this record's, not the file's
        # where the failing record starts; warcio's offset is meaningless inside a multi-record gzip member
        pos = f"offset {it.offset}" if it.offset >= offset else f"after offset {offset}"
        if _owns(max(it.offset, offset), lo, hi):
            yield _row(
                f,
                pos,
                reason="bad_warc_record",
                detail=f"{f.path} {pos}: unreadable record: {type(e).__name__}: {e}"[:2000],
            )
        return max(it.offset, offset) + 1
    return None


def _next_record_start(fh, pos: int, gz: bool, arc: bool) -> int | None:
    """The first offset >= pos where a record starts: a gzip member that decompresses to a WARC or ARC header,
    or (uncompressed) a line starting with `WARC/1.`. Hand-written: warcio cannot resynchronise."""
    marker = GZIP_MAGIC if gz else b"\nWARC/1."
    at = pos - (0 if gz else 1)  # a plain record start is found by the newline before it
    while at is not None:
        fh.seek(max(at, 0))
        carry, base = b"", max(at, 0)
        found = None
        while found is None and (chunk := fh.read(1 << 20)):
            buf = carry + chunk
            i = buf.find(marker)
            if i >= 0:
                found = base - len(carry) + i
            else:
                carry, base = buf[-(len(marker) - 1) :], base + len(chunk)
        if found is None:
            return None
        if not gz:
            return found + 1
        fh.seek(found)
        try:
            head = zlib.decompressobj(31).decompress(fh.read(4096), 64)
        except zlib.error:
            head = b""
        if head.startswith(b"WARC/") or (arc and head[:1].isalnum()):  # ARC records start with their URL
            return found
        at = found + 1
    return None


def _http_head(record, max_html_bytes: int) -> tuple[int | None, str, bytes]:
    """HTTP status, Content-Type and body of a record (at most a little over `max_html_bytes` of it, so a huge
    record costs no more memory). warcio parses HTTP headers only for http(s) target URIs, so a response
    record with another URI scheme still carries its raw header block: parse it here."""
    h = record.rec_headers
    http = record.http_headers
    body = record.content_stream().read(max_html_bytes + PREVIEW_CHARS)
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
        return _too_large(f, pos, given, preview, max(len(payload), record.length), max_html_bytes, **kw)
    binary = _binary_kind(payload, ctype) if mime in HTML_TYPES else None
    if binary:
        return _row(
            f, pos, given, reason="not_html", detail=f"{f.path} {pos}: '{mime}' payload is {binary}", **kw
        )
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
