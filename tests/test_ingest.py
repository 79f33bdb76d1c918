"""Ingest: every input format, stable ids, and every kind of bad record counted and kept aside with its
position."""

import gzip
import io
import json
import shutil

import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipeline.config import load_config
from pipeline.runner import read_record, run_pipeline
from tests.conftest import DATA

GOOD = "Photosynthesis turns light into chemical energy. Plants use it to make sugar from water and air."
PAGE = (
    "<html><head><title>t</title></head><body><article><h1>Leaves</h1>"
    f"<p>{GOOD * 4}</p><p>{GOOD}</p></article></body></html>"
)


def _warc(path, records):
    """records: (kind, url, content_type, payload bytes)"""
    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for kind, url, ctype, payload in records:
            if kind == "request":
                rec = w.create_warc_record(url, "request", payload=io.BytesIO(b"GET / HTTP/1.1\r\n\r\n"))
            else:
                http = StatusAndHeaders(
                    "200 OK" if kind == "ok" else "404 Not Found",
                    [("Content-Type", ctype)],
                    protocol="HTTP/1.1",
                )
                rec = w.create_warc_record(url, "response", payload=io.BytesIO(payload), http_headers=http)
            w.write_record(rec)


def _dropped(out):
    t = pq.read_table(str(out / "ingest" / "dropped"))
    return t.to_pylist()


def _kept(out):
    files = sorted(p for p in (out / "ingest").glob("*.parquet"))
    return pq.read_table([str(f) for f in files]).to_pylist() if files else []


@pytest.fixture
def bad_inputs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    lines = [
        json.dumps({"id": "a", "text": GOOD, "url": "http://x/a", "lang_hint": "en"}).encode(),
        b'{"id": "b", "text": "unterminated',  # malformed JSON (line 2)
        b'{"id": "c", "text": "caf\xe9"}',  # invalid UTF-8 (line 3)
        json.dumps({"id": "d", "text": "   "}).encode(),  # empty text (line 4)
        json.dumps({"id": "e", "body": "no text field"}).encode(),  # no text field (line 5)
        json.dumps({"id": "f", "text": "x" * (50 * 2**20)}).encode(),  # a 50 MB document (line 6)
        json.dumps({"text": GOOD + " Second."}).encode(),  # no id: positional id
    ]
    (d / "docs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    full = gzip.compress(
        b"".join(json.dumps({"id": f"g{i}", "text": f"{GOOD} {i}"}).encode() + b"\n" for i in range(200))
    )
    (d / "trunc.jsonl.gz").write_bytes(full[: len(full) // 2])  # truncated gzip
    _warc(
        d / "pages.warc.gz",
        [
            ("request", "http://site/page", None, None),
            ("ok", "http://site/page", "text/html; charset=utf-8", PAGE.encode()),
            (
                "ok",
                "http://site/logo.png",
                "image/png",
                b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
            ),  # non-HTML payload
            ("ok", "http://site/empty", "text/html", b"<html><body></body></html>"),  # nothing to extract
            ("404", "http://site/missing", "text/html", b"<html><body>not found</body></html>"),
        ],
    )
    shutil.copy(DATA / "warcio" / "example-bad.warc.gz.bad", d / "broken-gzip.warc.gz")
    shutil.copy(DATA / "warcio" / "example-trunc.warc", d / "trunc.warc")
    return d


def test_bad_records_are_counted_and_kept_aside(bad_inputs, write_config, tmp_path, ray_local):
    cfg = load_config(write_config({"ingest": {"inputs": [{"path": str(bad_inputs), "source": "web/test"}]}}))
    [rec] = run_pipeline(cfg)
    dropped = _dropped(tmp_path / "out")
    by_reason = {}
    for r in dropped:
        by_reason.setdefault(r["drop_reason"], []).append(r)

    assert rec["docs_in"] == rec["docs_out"] + sum(rec["dropped"].values())
    assert rec["dropped"] == {k: len(v) for k, v in by_reason.items()}
    assert rec["details"]["non_document_warc_records"]["request"] >= 1

    (bad_json,) = [r for r in by_reason["bad_json"] if "line 2" in r["drop_detail"]]
    assert "docs.jsonl line 2" in bad_json["drop_detail"] and "unterminated" in bad_json["text"]
    assert any("line 5" in r["drop_detail"] and "'text'" in r["drop_detail"] for r in by_reason["bad_json"])
    (utf8,) = by_reason["bad_utf8"]
    assert "docs.jsonl line 3: invalid UTF-8 at byte" in utf8["drop_detail"]
    (big,) = by_reason["too_large"]
    assert "docs.jsonl line 6: a line of" in big["drop_detail"]  # over the line cap: not even parsed
    assert len(big["text"]) == 65_536  # kept aside, truncated
    assert any("line 4" in r["drop_detail"] for r in by_reason["empty_text"])
    assert any("http://site/empty" == r["url"] for r in by_reason["empty_text"])
    truncated = {r["drop_detail"].split(":")[0].split("/")[-1] for r in by_reason["truncated_file"]}
    assert "trunc.jsonl.gz" in truncated
    (png,) = by_reason["not_html"]
    assert (
        png["url"] == "http://site/logo.png"
        and "image/png" in png["drop_detail"]
        and "offset" in png["drop_detail"]
    )
    (e404,) = by_reason["http_error"]
    assert "HTTP status 404" in e404["drop_detail"]
    broken = [r for r in dropped if "broken-gzip.warc.gz" in (r["drop_detail"] or "")]
    assert broken and broken[0]["drop_reason"] in ("bad_warc_record", "truncated_record")

    kept = _kept(tmp_path / "out")
    texts = [r["text"] for r in kept]
    assert GOOD in texts  # the good JSON line
    assert any(t.startswith(GOOD) and "0" in t for t in texts)  # the readable start of the truncated gzip
    assert any(
        "Photosynthesis" in t for r, t in zip(kept, texts) if r["url"] == "http://site/page"
    )  # extracted HTML
    a = next(r for r in kept if r["text"] == GOOD)
    assert json.loads(a["meta"])["lang_hint"] == "en" and a["url"] == "http://x/a"


def test_ids_are_stable_and_formats_agree(tmp_path, write_config, ray_local):
    """The same documents as JSONL, zstd JSONL and Parquet get the same ids; a rerun gives the same ids."""
    import pyarrow as pa
    import zstandard

    rows = [{"id": f"doc-{i}", "text": f"{GOOD} number {i}", "url": f"http://x/{i}"} for i in range(50)]
    d = tmp_path / "in"
    d.mkdir()
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (d / "a.jsonl").write_bytes(body)
    (d / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
    pq.write_table(pa.Table.from_pylist(rows), d / "c.parquet")
    ids = []
    for name in ["a.jsonl", "b.jsonl.zst", "c.parquet"]:
        out = tmp_path / name
        cfg = load_config(
            write_config(
                {
                    "run": {"output": str(out)},
                    "ingest": {"inputs": [{"path": str(d / name), "source": "web/same"}]},
                }
            )
        )
        run_pipeline(cfg)
        ids.append(sorted(r["id"] for r in _kept(out)))
        assert read_record(str(out), "ingest")["docs_out"] == 50
    assert ids[0] == ids[1] == ids[2] and len(set(ids[0])) == 50


def _output(out) -> tuple:
    """Every kept and dropped row (sorted) and the record's counts and details."""
    d = out / "ingest"
    kept = pq.read_table([str(p) for p in sorted(d.glob("*.parquet"))]).to_pylist()
    dropped = pq.read_table([str(p) for p in sorted((d / "dropped").glob("*.parquet"))]).to_pylist()
    rec = read_record(str(out), "ingest")
    counts = {k: rec[k] for k in ("docs_in", "docs_out", "dropped", "tokens_out", "details")}
    return sorted(kept, key=lambda r: r["id"]), sorted(dropped, key=str), counts


def test_files_cut_into_parts_give_what_whole_files_give(tmp_path, write_config, ray_local):
    """The same hostile inputs (damaged WARC records, BOMs, duplicate ids within and across files) read
    as one part per file and cut into parts of 1500 bytes (byte ranges of WARC and plain JSONL files,
    row groups of Parquet): the same rows, counts and details. Fails if a record at a range boundary is
    read by both parts or by neither, or if a later part numbers its lines or rows from zero."""
    import pyarrow as pa

    from tests.test_nothing_lost import _fuzz_inputs

    d = tmp_path / "in"
    d.mkdir()
    _fuzz_inputs(d, seed=5)
    rows = [{"id": f"p{i}", "text": f"{GOOD} row {i}"} for i in range(40)]
    pq.write_table(pa.Table.from_pylist(rows + rows[:3]), d / "groups.parquet", row_group_size=6)
    results = []
    for name, part_bytes in (("whole", 1 << 30), ("cut", 1500)):
        ingest = {"inputs": [{"path": str(d), "source": "web/cut"}], "max_doc_bytes": 20_000}
        cfg = {"run": {"output": str(tmp_path / name)}, "ingest": {**ingest, "part_bytes": part_bytes}}
        [rec] = run_pipeline(load_config(write_config(cfg, f"{name}.yaml")))
        results.append((rec["parts"], _output(tmp_path / name)))
    (whole_parts, whole), (cut_parts, cut) = results
    assert cut_parts > whole_parts + 5  # the files were cut
    assert cut[2]["dropped"].get("duplicate_id", 0) >= 3  # the Parquet file repeats three ids
    for _, _, counts in (cut, whole):  # more parts, more of them hold a later copy
        counts["details"].pop("parts_rewritten_for_duplicate_ids")
    assert cut[2] == whole[2]
    assert cut == whole


def test_a_file_of_only_bad_records_completes_with_an_empty_typed_part(tmp_path, write_config, ray_local):
    d = tmp_path / "in"
    d.mkdir()
    (d / "bad.jsonl").write_bytes(b'{"text": 42}\n[1, 2]\n{"id": "x", "text": "   "}\n')
    [rec] = run_pipeline(
        load_config(write_config({"ingest": {"inputs": [{"path": str(d), "source": "w/b"}]}}))
    )
    assert (rec["docs_in"], rec["docs_out"], rec["dropped"]) == (3, 0, {"bad_json": 2, "empty_text": 1})
    [part] = (tmp_path / "out" / "ingest").glob("*.parquet")
    t = pq.read_table(str(part))
    assert t.num_rows == 0 and {"id", "text", "source", "url", "meta"} <= set(t.column_names)


def test_ingest_on_an_object_store_commits_parts_there_and_a_rerun_skips(
    tmp_path, write_config, ray_local, s3_bucket
):
    """Output on an S3-compatible server, inputs cut into parts and repeating ids: the parts, their
    commits and the duplicate-id rewrites are written there, the result is the local run's, and a rerun
    finds the stage complete there and skips it."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    d = tmp_path / "in"
    d.mkdir()
    rows = [{"id": f"p{i}", "text": f"{GOOD} row {i}"} for i in range(30)]
    pq.write_table(pa.Table.from_pylist(rows + rows[:2]), d / "a.parquet", row_group_size=8)
    (d / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[5:9]))
    ingest = {"inputs": [{"path": str(d), "source": "web/s3"}], "part_bytes": 400}
    outs = {"local": str(tmp_path / "local"), "remote": f"{s3_bucket}/run"}
    recs = {}
    for name, out in outs.items():
        cfg = load_config(write_config({"run": {"output": out}, "ingest": ingest}, f"{name}.yaml"))
        [recs[name]] = run_pipeline(cfg)
    counts = [
        {k: r[k] for k in ("docs_in", "docs_out", "dropped", "parts", "details")} for r in recs.values()
    ]
    assert counts[0] == counts[1] and counts[1]["dropped"] == {"duplicate_id": 6}
    assert counts[1]["parts"] > 3 and counts[1]["details"]["parts_rewritten_for_duplicate_ids"] >= 2
    fs, root = pafs.FileSystem.from_uri(outs["remote"])
    commits = [
        i for i in fs.get_file_info(pafs.FileSelector(f"{root}/ingest/_parts")) if i.path.endswith(".json")
    ]
    assert len(commits) == counts[1]["parts"] + counts[1]["details"]["parts_rewritten_for_duplicate_ids"]
    back = tmp_path / "back"
    pafs.copy_files(f"{root}/ingest", str(back), fs, pafs.LocalFileSystem())
    local_rows = sorted(
        pq.read_table([str(p) for p in (tmp_path / "local" / "ingest").glob("*.parquet")]).to_pylist(),
        key=str,
    )
    assert sorted(pq.read_table([str(p) for p in back.glob("*.parquet")]).to_pylist(), key=str) == local_rows
    cfg = load_config(write_config({"run": {"output": outs["remote"]}, "ingest": ingest}, "remote.yaml"))
    [again] = run_pipeline(cfg)
    assert again.get("skipped") and again["docs_out"] == recs["remote"]["docs_out"]


def test_a_small_input_is_cut_finer_so_every_core_has_work_to_the_end():
    from pipeline.stages.ingest.readers import InputFile
    from pipeline.stages.ingest.stage import MIN_PART_BYTES, MIN_PARTS, plan

    def files(*sizes: int) -> list[InputFile]:
        return [
            InputFile(f"/d/f{i}.warc.gz", f"f{i}.warc.gz", "web/x", "warc", size=s)
            for i, s in enumerate(sizes)
        ]

    mb = 2**20
    demo = plan(files(16 * mb, 7 * mb), 256 * mb)  # the demo's two WARC files: 8 + 4 parts, not 2
    assert [p.spec["of"] for p in demo] == [8] * 8 + [4] * 4
    first = [(p.spec["lo"], p.spec["hi"]) for p in demo[:8]]  # consecutive ranges over the whole file
    assert first[0][0] == 0 and first[-1][1] is None and all(a[1] == b[0] for a, b in zip(first, first[1:]))
    assert [p.name for p in plan(files(MIN_PART_BYTES - 1), 256 * mb)] == ["00000-f0.warc.gz"]  # one part
    crawl = plan(files(*[MIN_PARTS * 256 * mb] * 2), 256 * mb)  # a large input: part_bytes decides
    assert len(crawl) == 2 * MIN_PARTS
    assert plan(files(16 * mb), mb)[0].spec["of"] == 16  # a part_bytes under the floor still applies
