"""Nothing lost (issue 20): mix's read plan covers every row once for any layout; hostile records and
damaged files are counted and kept aside; extraction is a pure function of the page; input counts come
from a path independent of the readers."""

from __future__ import annotations

import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def _layout_file(path, rng: random.Random, first_id: int) -> int:
    """A Parquet part of random row groups: many small ones, some large (by text), in random order."""
    n = 0
    with pq.ParquetWriter(path, pa.schema([("id", pa.int64()), ("text", pa.large_string())])) as w:
        for _ in range(rng.randint(0, 7)):
            rows = rng.choice([1, 2, 3, 5, 8, 13, 40])
            size = rng.choice([10, 50, 400, 3000])
            ids = list(range(first_id + n, first_id + n + rows))
            w.write_table(pa.table({"id": ids, "text": ["x" * size] * rows}, schema=w.schema))
            n += rows
    return n


@pytest.mark.parametrize("seed", range(40))
def test_read_plan_covers_every_row_once_for_any_layout(tmp_path, monkeypatch, seed):
    """Property test over random row-group layouts and core counts: each row of each stage is read by
    exactly one task, at the position the task says (its `row`). Fails if a run of small groups is
    continued across a split large group (rows read twice, others never)."""
    from pipeline.stages.mix import stage as mix

    rng = random.Random(seed)
    monkeypatch.setattr(mix, "TASK_BYTES", rng.choice([500, 4000, 20_000, 1 << 22]))
    files, expected = {}, {}
    for s in range(rng.randint(1, 3)):
        stage, paths, n = f"s{s}", [], 0
        for p in range(rng.randint(1, 3)):
            path = str(tmp_path / f"{stage}-{p}.parquet")
            n += _layout_file(path, rng, n)
            paths.append(path)
        files[stage], expected[stage] = paths, n
    tasks = mix._read_tasks(files, cores=rng.choice([1, 2, 3, 8, 32]))

    for stage, n in expected.items():
        seen = [0] * n
        for t in (t for t in tasks if t["stage"] == stage):
            ids = pq.ParquetFile(t["path"]).read_row_groups(range(t["first"], t["last"]))["id"].to_pylist()
            got = ids[t["start"] : t["stop"]]
            assert len(got) == t["stop"] - t["start"], f"task {t} reads past its row groups"
            assert got == list(range(t["row"], t["row"] + len(got))), f"task {t} is not at its row"
            for i in got:
                seen[i] += 1
        assert seen == [1] * n, f"stage {stage}: rows read {[i for i, c in enumerate(seen) if c != 1]}"


# --- hostile records and damaged files, at the readers (no Ray: each case is exact and fast) ---------------

GOOD = "Photosynthesis turns light into chemical energy. Plants use it to make sugar from water and air."


def _read(path, fmt, **kw):
    from pipeline.schema import DOC_WITH_DROP_SCHEMA
    from pipeline.stages.ingest.readers import InputFile, read_jsonl, read_parquet, read_warc

    f = InputFile(str(path), path.name, "web/t", fmt)
    stats = {"skipped": {}, "repaired": {}}
    reader = {"jsonl": read_jsonl, "parquet": read_parquet, "warc": read_warc}[fmt]
    rows = list(reader(f, kw.get("limit", 1_000_000 if fmt != "warc" else 10_000_000), stats))
    for r in rows:
        r.pop("_repaired"), r.pop("_place")
    raw = DOC_WITH_DROP_SCHEMA.insert(2, pa.field("html", pa.large_string()))
    pa.Table.from_pylist(rows, schema=raw)  # every row can be stored (a lone surrogate could not)
    return rows, stats


def test_hostile_jsonl_records_are_repaired_or_kept_aside(tmp_path):
    """Each hostile line is repaired by its stated rule or dropped with its line and reason; none stops
    the file and every line is accounted for."""
    import json

    deep = "[" * 30_000 + "]" * 30_000  # under the line cap below, far over any recursion limit
    lines = [
        b"\xef\xbb\xbf" + json.dumps({"id": "bom", "text": GOOD}).encode(),  # BOM before line 1
        b'{"id": "surrogate-text", "text": "half an emoji \\ud83d here. ' + GOOD.encode() + b'"}',
        b'{"id": "\\udc00 lone", "text": "' + GOOD.encode() + b' id."}',  # lone surrogate in the id
        b'{"id": "nul", "text": "a\\u0000b ' + GOOD.encode() + b'"}',
        b'{"id": "crlf", "text": "' + GOOD.encode() + b' crlf"}\r',  # a CRLF line end
        deep.encode(),  # nested 30,000 deep (line 6)
        b'{"id": "deepmeta", "text": "' + GOOD.encode() + b'", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"id": "wrongtype", "text": 5}',  # line 8
        b'{"id": {"a": 1}, "text": "' + GOOD.encode() + b' dict id"}',
        b'{"id": "big", "text": "' + b"y" * 200_000 + b'"}',  # over the line cap of max_doc_bytes=1000
        b'{"id": "bad\xff", "text": "x"}',  # invalid UTF-8 (line 11)
        b"",
        json.dumps({"id": "last", "text": GOOD + " last"}).encode(),
    ]
    p = tmp_path / "hostile.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    rows, stats = _read(p, "jsonl", limit=1000)
    by_line = {json.loads(r["meta"])["pos"]: r for r in rows}

    assert len(rows) == 12  # the blank line is not a record
    for n in (1, 2, 3, 4, 5, 9, 13):
        assert by_line[f"line {n}"]["drop_reason"] is None, by_line[f"line {n}"]
    assert "\ufffd" in by_line["line 2"]["text"] and "lone_surrogate" in by_line["line 2"]["meta"]
    assert by_line["line 4"]["text"].startswith("ab ") and '"nul"' in by_line["line 4"]["meta"]
    assert stats["repaired"] == {"bom": 1}
    assert (
        by_line["line 6"]["drop_reason"] == "bad_json"
        and "nested too deeply" in by_line["line 6"]["drop_detail"]
    )
    assert by_line["line 7"]["drop_reason"] in (None, "bad_json", "bad_record")
    assert by_line["line 8"]["drop_reason"] == "bad_json"
    assert (
        by_line["line 10"]["drop_reason"] == "too_large"
        and "hostile.jsonl line 10" in by_line["line 10"]["drop_detail"]
    )
    assert by_line["line 11"]["drop_reason"] == "bad_utf8"


def _parquet_bytes(rows) -> bytes:
    import io

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("zero.parquet", b"", "bad_file"),
        ("cut.parquet", None, "bad_file"),  # the first half of a good file: no footer
        ("notext.parquet", _parquet_bytes([{"body": "x"}]), "bad_file"),
        ("notgzip.jsonl.gz", b"this is not gzip\n", "bad_file"),
    ],
)
def test_a_damaged_file_is_one_row_naming_it(tmp_path, name, content, reason):
    p = tmp_path / name
    if content is None:
        full = _parquet_bytes([{"text": f"{GOOD} {i}"} for i in range(100)])
        content = full[: len(full) // 2]
    p.write_bytes(content)
    rows, _ = _read(p, "parquet" if name.endswith(".parquet") else "jsonl")
    assert [r["drop_reason"] for r in rows] == [reason]
    assert str(p) in rows[0]["drop_detail"]


def test_empty_files_give_no_rows_and_no_error(tmp_path):
    for name, fmt in (("e.jsonl", "jsonl"), ("e.warc", "warc"), ("e.warc.gz", "warc")):
        (tmp_path / name).write_bytes(b"")
        assert _read(tmp_path / name, fmt)[0] == []
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "e.parquet")
    assert _read(tmp_path / "e.parquet", "parquet")[0] == []


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst", ".jsonl.bz2"])
def test_a_cut_compressed_file_keeps_its_readable_start(tmp_path, suffix):
    import bz2
    import gzip
    import json

    import zstandard

    body = b"".join(
        json.dumps({"text": f"{GOOD} {i}"}).encode() + b"\n" for i in range(20_000)
    )  # many zstd blocks
    packed = {".jsonl.gz": gzip.compress, ".jsonl.zst": zstandard.ZstdCompressor().compress}.get(
        suffix, bz2.compress
    )(body)
    p = tmp_path / ("cut" + suffix)
    p.write_bytes(packed[: len(packed) // 2])
    rows, _ = _read(p, "jsonl")
    assert rows[-1]["drop_reason"] == "truncated_file" and str(p) in rows[-1]["drop_detail"]
    assert rows[:-1] and all(r["drop_reason"] is None for r in rows[:-1])


def _page(i: int, mark: str = "") -> bytes:
    paras = "".join(
        f"<p>Page {i}{mark}, paragraph {k}: {GOOD} Sentence {k} ends here.</p>" for k in range(12)
    )
    return f"<html><head><title>p{i}</title></head><body><article>{paras}</article></body></html>".encode()


def _warc_records(n: int, gz: bool, marks: list[str] | None = None) -> list[bytes]:
    """Each record of a WARC on its own (one gzip member each when gz), so a test can damage one."""
    import io

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    out = []
    for i in range(n):
        buf = io.BytesIO()
        w = WARCWriter(buf, gzip=gz)
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        w.write_record(
            w.create_warc_record(
                f"http://site/{i}",
                "response",
                payload=io.BytesIO(_page(i, marks[i] if marks else "")),
                http_headers=http,
            )
        )
        out.append(buf.getvalue())
    return out


def _content_length(rec: bytes, delta: int) -> bytes:
    head, sep, rest = rec.partition(b"\r\n\r\n")
    lines = [
        b"Content-Length: %d" % (int(ln.split(b":")[1]) + delta) if ln.startswith(b"Content-Length") else ln
        for ln in head.split(b"\r\n")
    ]
    return b"\r\n".join(lines) + sep + rest


def _regzip(rec: bytes, change) -> bytes:
    import gzip

    return gzip.compress(change(gzip.decompress(rec)))


def _flip_middle(rec: bytes) -> bytes:
    mid = len(rec) // 2
    return rec[:mid] + bytes(b ^ 0xFF for b in rec[mid : mid + 16]) + rec[mid + 16 :]


DAMAGES = {
    # name: (gzip?, index of the damaged record, damage, the reason it must be kept aside with)
    "gzip member cut at the end": (True, 5, lambda r: r[: len(r) * 8 // 10], "truncated_record"),
    "plain record cut at the end": (False, 5, lambda r: r[: len(r) * 8 // 10], "truncated_record"),
    "gzip member damaged mid-file": (True, 2, _flip_middle, "bad_warc_record"),
    "plain Content-Length 200 short": (False, 2, lambda r: _content_length(r, -200), "bad_warc_record"),
    "plain Content-Length 200 long": (False, 2, lambda r: _content_length(r, 200), "bad_warc_record"),
    "gzip Content-Length 200 short": (
        True,
        2,
        lambda r: _regzip(r, lambda x: _content_length(x, -200)),
        "bad_warc_record",
    ),
    "gzip Content-Length 200 long": (
        True,
        2,
        lambda r: _regzip(r, lambda x: _content_length(x, 200)),
        "truncated_record",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGES))
def test_a_damaged_warc_record_is_kept_aside_where_it_starts_and_reading_resumes(tmp_path, case):
    """Never kept as a good document; every other record read; the row names the damaged record's offset."""
    from pipeline.stages.ingest.count import count_records
    from pipeline.stages.ingest.readers import InputFile

    gz, bad, damage, reason = DAMAGES[case]
    records = _warc_records(6, gz)
    records[bad] = damage(records[bad])
    p = tmp_path / ("x.warc.gz" if gz else "x.warc")
    p.write_bytes(b"".join(records))
    rows, _ = _read(p, "warc")
    offset = sum(len(r) for r in records[:bad])

    damaged = [r for r in rows if r["drop_reason"] is not None]
    assert [r["drop_reason"] for r in damaged] == [reason], damaged
    assert f"x.warc{'.gz' if gz else ''} offset {offset}:" in damaged[0]["drop_detail"]
    good = sorted(r["url"] for r in rows if r["drop_reason"] is None)
    assert good == sorted(f"http://site/{i}" for i in range(6) if i != bad)
    assert all(r["html"].rstrip().endswith("</html>") for r in rows if r["drop_reason"] is None)
    # the independent count refuses a damaged file, so it never vouches for one
    assert count_records(InputFile(str(p), p.name, "web/t", "warc")) in (None, 6)


def test_binary_bodies_served_as_html_are_not_html(tmp_path):
    import io

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    p = tmp_path / "b.warc.gz"
    with open(p, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for name, body in (("pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj"), ("bin", b"\x00\x01\x02" * 50)):
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
            w.write_record(
                w.create_warc_record(
                    f"http://s/{name}", "response", payload=io.BytesIO(body), http_headers=http
                )
            )
    rows, _ = _read(p, "warc")
    assert [r["drop_reason"] for r in rows] == ["not_html", "not_html"]
    assert "PDF" in rows[0]["drop_detail"] and "binary" in rows[1]["drop_detail"]


# --- extraction: a pure function of the page, under a time limit ------------------------------------------


def _extract(pages: list[str], timeout: float = 10.0) -> list[dict]:
    """Rows of these pages after extraction, one after the other in this process's sandbox."""
    from pipeline.stages.ingest.extract import extract_row

    rows = [
        {"id": str(i), "text": None, "meta": f'{{"pos": "p{i}"}}', "drop_reason": None}
        for i in range(len(pages))
    ]
    for r, html in zip(rows, pages):
        extract_row(r, html, timeout=timeout)
    return rows


def test_extraction_does_not_depend_on_what_was_extracted_before():
    """Pages sharing a paragraph, extracted alone, in order, reversed and four times over in one process:
    the same text each time. trafilatura's `deduplicate` (a process-wide cache) failed this: a page's
    shared paragraph vanished once it had been seen a few times."""
    import random

    shared = "<p>This paragraph appears on every page of the site and carries the site's own notice.</p>"
    pages = [
        f"<html><body><article><h1>Page {i}</h1>{shared}"
        + "".join(f"<p>Page {i} says {GOOD} Point {k}.</p>" for k in range(5))
        + "</article></body></html>"
        for i in range(12)
    ]
    alone = [_extract([p])[0]["text"] for p in pages]
    assert all("site's own notice" in t for t in alone)
    order = list(range(12)) * 4
    random.Random(0).shuffle(order)
    for sequence in (list(range(12)), list(reversed(range(12))), order):
        texts = [r["text"] for r in _extract([pages[i] for i in sequence])]
        assert texts == [alone[i] for i in sequence]


def test_a_page_over_extract_timeout_is_dropped_and_the_next_is_extracted():
    import random

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(6)) for _ in range(5000)]
    slow = "".join(
        f"<div><p>{' '.join(rng.choice(words) for _ in range(12))}.</p></div>" for _ in range(6000)
    )
    small = f"<html><body><article><p>{GOOD}</p><p>{GOOD} Again.</p></article></body></html>"
    out = _extract([f"<html><body>{slow}</body></html>", small], timeout=1.0)
    assert out[0]["drop_reason"] == "extract_timeout" and "extract_timeout = 1.0 s" in out[0]["drop_detail"]
    assert out[1]["drop_reason"] is None and GOOD in out[1]["text"]


# --- the independent count --------------------------------------------------------------------------------


def test_records_are_counted_apart_from_the_readers(tmp_path):
    """count.py agrees with the readers on sound files, refuses a cut one, and check_counts fails a reader
    that gives one record less, naming the file."""
    import gzip
    import json

    from pipeline.stages.ingest.count import count_records
    from pipeline.stages.ingest.readers import InputFile
    from pipeline.stages.ingest.stage import check_counts

    lines = [json.dumps({"text": f"{GOOD} {i}"}).encode() for i in range(30)]
    body = (
        b"\xef\xbb\xbf" + b"\r\n".join(lines[:10]) + b"\r\n\n  \n" + b"\n".join(lines[10:])
    )  # no final newline
    (tmp_path / "a.jsonl").write_bytes(body)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(body))
    pq.write_table(pa.table({"text": [GOOD] * 7}), tmp_path / "a.parquet", row_group_size=3)
    (tmp_path / "a.warc.gz").write_bytes(b"".join(_warc_records(6, True)))
    (tmp_path / "a.warc").write_bytes(b"".join(_warc_records(6, False)))
    cut = b"".join(_warc_records(6, True))
    (tmp_path / "cut.warc.gz").write_bytes(cut[:-100])
    expected = {
        "a.jsonl": 30,
        "a.jsonl.gz": 30,
        "a.parquet": 7,
        "a.warc.gz": 6,
        "a.warc": 6,
        "cut.warc.gz": None,
    }
    for name, n in expected.items():
        fmt = "warc" if ".warc" in name else name.split(".")[1]
        f = InputFile(str(tmp_path / name), name, "web/t", fmt)
        assert count_records(f) == n, name
        if n is not None:
            rows, stats = _read(tmp_path / name, fmt)
            assert len(rows) + sum(stats["skipped"].values()) == n, name
            entry = {
                "path": f.path,
                "rows": len(rows),
                "skipped": stats["skipped"],
                "damaged": [],
                "counted": n,
            }
            check_counts([entry])
            with pytest.raises(RuntimeError, match=f"reader of {f.path} gave {len(rows) - 1} rows"):
                check_counts([{**entry, "rows": len(rows) - 1}])


# --- through ingest: generated hostile records and files, every good one kept, every bad one counted --------


def _fuzz_inputs(d, seed: int) -> tuple[set[str], int]:
    """Files of every format with good records (each carrying a unique marker word) mixed with generated
    hostile records and damaged files. Returns (good markers, bad records)."""
    import bz2
    import gzip
    import json

    import zstandard

    rng = random.Random(seed)
    good, bad, given = set(), 0, []

    def marker() -> str:
        m = f"zq{len(good):04d}x{rng.randint(0, 10**6)}"
        good.add(m)
        return m

    def good_line() -> bytes:
        kind = rng.choice(["plain", "surrogate", "nul", "dict_id"])
        m = marker()
        text = json.dumps(f"{GOOD} {m}.")[1:-1]
        if kind == "surrogate":
            text += " half \\ud83d emoji"
        if kind == "nul":
            text += " nul \\u0000 here"
        rid = '{"a": %d}' % rng.randint(0, 10**9) if kind == "dict_id" else f'"{m}"'
        if kind != "dict_id":
            given.append(m)
        return b'{"id": %s, "text": "%s"}' % (rid.encode(), text.encode())

    bad_lines = [
        b'{"id": "b", "text": "unterminated',
        b'{"id": "c", "text": "caf\xe9"}',
        b"[" * 20_000,
        b'{"text": 42}',
        b'{"text": "' + b"w" * 150_000 + b'"}',  # over the line cap of max_doc_bytes 20000
        b'{"text": "   "}',
        b"[1, 2, 3]",
    ]
    for name, pack in (
        ("a.jsonl", bytes),
        ("b.jsonl.gz", gzip.compress),
        ("c.jsonl.zst", None),
        ("d.jsonl.bz2", bz2.compress),
    ):
        lines = []
        for _ in range(rng.randint(5, 15)):
            if rng.random() < 0.3:
                lines.append(rng.choice(bad_lines))
                bad += 1
            elif rng.random() < 0.1 and given:  # a later record with an id already given: duplicate_id
                lines.append(
                    b'{"id": "%s", "text": "%s zd%d."}' % (rng.choice(given).encode(), GOOD.encode(), bad)
                )
                bad += 1
            else:
                lines.append(good_line())
        end = rng.choice([b"\n", b"\r\n"])
        body = (b"\xef\xbb\xbf" if rng.random() < 0.5 else b"") + end.join(lines) + end
        (d / name).write_bytes(zstandard.ZstdCompressor().compress(body) if pack is None else pack(body))
    pq.write_table(
        pa.table({"text": [f"{GOOD} {marker()}." for _ in range(rng.randint(3, 9))]}), d / "e.parquet"
    )
    (d / "zero.parquet").write_bytes(b"")
    pq.write_table(pa.table({"body": ["no text column"]}), d / "notext.parquet")
    (d / "zero.jsonl").write_bytes(b"")
    bad += 2  # the two unreadable Parquet files, one row each
    for gz in (True, False):
        hit = [rng.random() < 0.35 for _ in range(8)]
        records = _warc_records(8, gz, ["" if h else f" {marker()}" for h in hit])
        for i in (i for i, h in enumerate(hit) if h):
            records[i] = rng.choice([v[2] for v in DAMAGES.values() if v[0] == gz and v[1] == 2])(records[i])
            bad += 1
        (d / (f"f{int(gz)}.warc" + (".gz" if gz else ""))).write_bytes(b"".join(records))
    return good, bad


@pytest.mark.parametrize("seed", [0, 1])
def test_fuzzed_inputs_through_ingest_lose_nothing(tmp_path, write_config, ray_local, seed):
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    d = tmp_path / "in"
    d.mkdir()
    good, bad = _fuzz_inputs(d, seed)
    cfg = load_config(
        write_config(
            {"ingest": {"inputs": [{"path": str(d), "source": "web/fuzz"}], "max_doc_bytes": 20_000}}
        )
    )
    [rec] = run_pipeline(cfg)
    out = tmp_path / "out" / "ingest"
    kept = pq.read_table([str(p) for p in out.glob("*.parquet")])["text"].to_pylist()
    found = {w.strip(".,") for t in kept for w in t.split() if w.startswith("zq")}

    assert found == good, f"lost {sorted(good - found)}, invented {sorted(found - good)}"
    assert not [t for t in kept if " zd" in t]  # no second record of an id was kept
    assert rec["docs_out"] == len(good)
    assert sum(rec["dropped"].values()) == bad, rec["dropped"]
    assert rec["docs_in"] == len(good) + bad
    assert {os.path.basename(p) for p in rec["details"]["files_damaged"]} >= {
        "zero.parquet",
        "notext.parquet",
    }
    assert rec["details"]["files_checked"] >= 5  # the sound files were counted apart and agreed
    assert os.path.join(str(d), "zero.jsonl") in rec["details"]["files_empty"]


def test_ingest_of_only_empty_files_completes_empty(tmp_path, write_config, ray_local):
    """Empty is normal: a record with zero documents and an empty typed part for the next stage."""
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    d = tmp_path / "in"
    d.mkdir()
    (d / "e.jsonl").write_bytes(b"")
    (d / "blank.jsonl").write_bytes(b"\n  \n\r\n")
    cfg = load_config(write_config({"ingest": {"inputs": [{"path": str(d), "source": "web/e"}]}}))
    [rec] = run_pipeline(cfg)
    assert (rec["docs_in"], rec["docs_out"], rec["dropped"]) == (0, 0, {})
    assert len(rec["details"]["files_empty"]) == 2 and rec["details"]["files_checked"] == 2
    part = pq.read_table(str(tmp_path / "out" / "ingest"))
    assert part.num_rows == 0 and {"id", "text", "source"} <= set(part.column_names)
