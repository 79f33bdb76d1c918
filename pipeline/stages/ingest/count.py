"""Input records counted a second way, sharing no code with readers.py: the check that the readers lost
nothing.

Parquet rows come from the footer; JSONL records are the non-blank lines after decompression with the
standard modules; WARC records are gzip members walked with zlib, or (uncompressed) header blocks walked by
their Content-Length. Hand-written because the point is to not use the readers' parsers (warcio). A file
that this count cannot read to its end is damaged: the readers' rows say where, and no count is compared.
"""

from __future__ import annotations

import bz2
import gzip
import zlib

import fsspec
import pyarrow.parquet as pq

from pipeline.stages.ingest.readers import InputFile

CHUNK = 1 << 20
GZ_CHUNK = 1 << 16
_BLANK = b" \t\n\r\x0b\x0c"


def count_records(f: InputFile) -> int | None:
    """Records in the file (every WARC record, of any type), or None if it cannot be read to its end."""
    try:
        with fsspec.open(f.path, "rb") as fh:
            if f.format == "parquet":
                return pq.read_metadata(fh).num_rows
            if f.format == "jsonl":
                return _jsonl_lines(_decompressed(fh, f.path))
            if fh.read(2) == b"\x1f\x8b":
                fh.seek(0)
                return _gzip_members(fh)
            if f.path.lower().endswith(".arc"):
                return None  # plain ARC: no count kept
            fh.seek(0)
            return _warc_blocks(fh)
    except Exception:  # damaged: counted and kept aside by the readers
        return None


def _decompressed(fh, path: str):
    low = path.lower()
    if low.endswith(".gz"):
        return gzip.GzipFile(fileobj=fh)
    if low.endswith(".bz2"):
        return bz2.BZ2File(fh)
    if low.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
    return fh


def _jsonl_lines(stream) -> int:
    """Lines with anything but whitespace (a UTF-8 BOM at the start is not content)."""
    n, content, first = 0, False, True
    while chunk := stream.read(CHUNK):
        if first:
            chunk, first = chunk.removeprefix(b"\xef\xbb\xbf"), False
        pieces = chunk.split(b"\n")
        for i, piece in enumerate(pieces):
            content = content or bool(piece.translate(None, _BLANK))
            if i < len(pieces) - 1:  # a newline ends this line
                n, content = n + content, False
    return n + content


def _gzip_members(fh) -> int:
    """Members of a gzip file: one record each in a WARC written to the standard. Input goes in 64 KiB at a
    time and the output is dropped, so even a member that inflates 1000-fold costs little memory."""
    n, d, started = 0, zlib.decompressobj(31), False
    data = fh.read(GZ_CHUNK)
    while data:
        started = True
        d.decompress(data)
        if d.eof:
            n, data = n + 1, d.unused_data or fh.read(GZ_CHUNK)
            d, started = zlib.decompressobj(31), False
        else:
            data = fh.read(GZ_CHUNK)
    if started:
        raise EOFError("the last gzip member is cut")
    return n


def _warc_blocks(fh) -> int:
    """Uncompressed WARC records: a header block ended by a blank line, a body of Content-Length bytes, and
    the two line ends after it."""
    n = 0
    while True:
        line = fh.readline()
        while line in (b"\r\n", b"\n"):
            line = fh.readline()
        if not line:
            return n
        if not line.startswith(b"WARC/"):
            raise ValueError(f"no record header at {fh.tell() - len(line)}")
        length = None
        while (line := fh.readline()) not in (b"\r\n", b"\n", b""):
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"content-length":
                length = int(value.strip())
        if length is None:
            raise ValueError("a record without Content-Length")
        body = fh.read(length)
        if len(body) < length:
            raise EOFError("a record is cut")
        n += 1
