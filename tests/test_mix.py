"""Stage `mix` end to end on real text: manifests, shards, shares, decoding, determinism, impossible recipes.

The upstream outputs are built here from real articles of the bundled OneStopEnglish corpus so the
tests need not run ingest..synth: 'dedup' holds advanced/intermediate articles with an edu_score
(from their reading level), 'synth' stands in for the synthetic stage with elementary articles.
"""

from __future__ import annotations

import copy
import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline import storage
from pipeline.config import parse_config
from pipeline.errors import UserError
from pipeline.runner import read_record, run_pipeline
from pipeline.shards import IndexedDataset
from pipeline.tokenizer import PHI3_OFFLINE, load_tokenizer
from tests.conftest import DATA

LEVEL_SCORE = {"Adv": 0.9, "Int": 0.6, "Ele": 0.3}


def _articles() -> list[dict]:
    raw = (
        zstandard.ZstdDecompressor()
        .stream_reader(open(DATA / "demo" / "onestopenglish.jsonl.zst", "rb"))
        .read()
    )
    rows = [json.loads(line) for line in io.BytesIO(raw).read().decode().splitlines()]
    return sorted(rows, key=lambda r: r["id"])


def _write_stage(
    output, stage: str, rows: list[dict], parts: int = 1, row_group_size: int | None = None
) -> None:
    """Parts and row groups like a stage's: mix plans its tasks from them (merging small groups, splitting
    large)."""
    d = storage.join(str(output), stage)
    storage.make_dir(d)
    table = pa.Table.from_pylist(rows)
    step = -(-len(rows) // parts)
    for i in range(parts):
        pq.write_table(
            table.slice(i * step, step), storage.join(d, f"part-{i}.parquet"), row_group_size=row_group_size
        )
    rec = {
        "stage": stage,
        "status": "complete",
        "config_hash": "test",
        "input_fingerprint": "test",
        "docs_in": len(rows),
        "docs_out": len(rows),
        "dropped": {},
        "tokens_out": 0,
        "wall_s": 0,
    }
    storage.write_json(storage.join(d, "_stage.json"), rec)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """An output directory with complete 'dedup' (web, with edu_score) and 'synth' stages of real text."""
    out = tmp_path_factory.mktemp("mix") / "out"
    arts = _articles()
    level = lambda r: r["id"].split("/")[1][:3]  # noqa: E731  Texts-SeparatedByReadingLevel/Adv-Txt/...
    web = [r for r in arts if level(r) == "Adv"][:30] + [r for r in arts if level(r) == "Int"][:30]
    synth = [r for r in arts if level(r) == "Ele"][:12]
    _write_stage(
        out,
        "dedup",
        [
            {
                "id": f"w{i:03d}",
                "text": r["text"],
                "source": "web/onestopenglish",
                "url": None,
                "meta": "{}",
                "edu_score": LEVEL_SCORE[level(r)],
            }
            for i, r in enumerate(web)
        ],
        parts=2,
        row_group_size=4,
    )
    _write_stage(
        out,
        "synth",
        [
            {"id": f"s{i:03d}", "text": r["text"], "source": "synth/textbook", "url": None, "meta": "{}"}
            for i, r in enumerate(synth)
        ],
    )
    return out


MIX = {
    "tokenizer": str(PHI3_OFFLINE),
    "seed": 7,
    "shard_tokens": 8000,
    "batch_size": 16,
    "phase1": {
        "sources": [
            {"name": "web", "stage": "dedup", "weight": 0.8},
            {"name": "synth", "stage": "synth", "weight": 0.2, "max_epochs": 3},
        ]
    },
    "phase2": {
        "tokens": 40000,
        "sources": [
            {
                "name": "web_edu",
                "stage": "dedup",
                "where": ["edu_score >= 0.7", "source == web/onestopenglish"],
                "weight": 0.6,
            },
            {"name": "synth", "stage": "synth", "weight": 0.4, "max_epochs": 4},
        ],
    },
}


def _config(output, mix=MIX):
    return parse_config(
        {
            "run": {"output": str(output), "stages": ["mix"]},
            "ray": {"num_cpus": 2, "object_store_memory_mb": 512, "progress_bars": False},
            "ingest": {
                "inputs": [
                    {"path": "tests/data/demo/onestopenglish.jsonl.zst", "source": "web/onestopenglish"}
                ]
            },
            "mix": mix,
        }
    )


def _run(upstream, tmp_path, mix=MIX, name="run"):
    out = tmp_path / name
    shutil.copytree(upstream, out)
    run_pipeline(_config(out, mix), log=lambda _: None)
    return out


def _texts(output, stage):
    t = pq.read_table(storage.join(str(output), stage))
    return dict(zip(t["id"].to_pylist(), t["text"].to_pylist()))


def test_mix_writes_both_phases_as_the_recipe_says(ray_local, upstream, tmp_path):
    out = _run(upstream, tmp_path)
    tok = load_tokenizer(str(PHI3_OFFLINE))
    texts = {**_texts(out, "dedup"), **_texts(out, "synth")}
    for phase, recipe in (("phase1", MIX["phase1"]), ("phase2", MIX["phase2"])):
        pdir = out / "mix" / phase
        manifest = json.loads((pdir / "manifest.json").read_text())
        assert list(manifest) == [
            *("phase", "tokenizer", "vocab_size", "tokens", "sources", "shards"),
            *("dir", "shard_tokens", "blend", "data_path"),
        ]
        assert manifest["phase"] == phase and manifest["vocab_size"] == 32011
        shards = [IndexedDataset(str(pdir / s)) for s in manifest["shards"]]
        assert len(shards) > 1  # shard_tokens is small on purpose
        # token counts: manifest == shards == per-document listing == per-source sums
        assert manifest["tokens"] == sum(s.num_tokens for s in shards)
        docs = pq.read_table(pdir / "documents.parquet").to_pandas()
        assert (
            manifest["tokens"]
            == docs["tokens"].sum()
            == sum(v["tokens"] for v in manifest["sources"].values())
        )
        # shards close at the first key bucket edge past shard_tokens: at least that, at most a bucket more
        longest = docs["tokens"].max()
        assert all(8000 <= s.num_tokens < 8000 + 2 * longest for s in shards[:-1])
        # documents.parquet: one part per shard, written by the task that wrote the shard
        assert sorted(p.name for p in (pdir / "documents.parquet").iterdir()) == [
            f"{s}.parquet" for s in manifest["shards"]
        ]
        # blend: every shard by its absolute prefix, weights = its share of the tokens
        assert manifest["blend"]["prefixes"] == [str(pdir / s) for s in manifest["shards"]]
        assert manifest["blend"]["weights"] == pytest.approx(
            [s.num_tokens / manifest["tokens"] for s in shards], abs=1e-6
        )
        # budgets: each source's tokens within its cut's tolerance (the tokens of the hash bucket at the
        # cut: one or two documents here) of its target, its share within that of the recipe's weight
        rec = read_record(str(out), "mix")["details"][phase]
        for src in recipe["sources"]:
            got, c = manifest["sources"][src["name"]], rec["cuts"][src["name"]]
            assert got["tokens"] == c["tokens"]
            assert abs(got["tokens"] - rec["targets"][src["name"]]) <= c["tolerance"] <= 2 * longest
            assert abs(got["weight"] - src["weight"]) <= 2 * longest / manifest["tokens"], (phase, got)
            assert got["epochs"] <= src.get("max_epochs", 1.0) + 1e-9
            assert got["docs"] == (docs["source"] == src["name"]).sum()
        # every document decodes back to its source text, EOS after each
        for row in docs.itertuples():
            ids = shards[row.shard].doc(row.index)
            assert ids[-1] == tok.eos_token_id and tok.eos_token_id not in ids[:-1]
            assert tok.decode(ids[:-1].tolist()) == texts[row.id]
        # different sources are interleaved, not written one after the other
        first = docs[docs["shard"] == 0]["source"]
        assert first.nunique() == 2
    p1 = json.loads((out / "mix" / "phase1" / "manifest.json").read_text())
    # null budget: web is the binding source
    assert p1["sources"]["web"]["epochs"] == pytest.approx(1.0, abs=0.05)
    edu = dict(zip(*[pq.read_table(out / "dedup")[c].to_pylist() for c in ("id", "edu_score")]))
    p2docs = pq.read_table(out / "mix" / "phase2" / "documents.parquet").to_pandas()
    assert min(edu[i] for i in p2docs[p2docs["source"] == "web_edu"]["id"]) >= 0.7
    assert p2docs["tokens"].sum() == pytest.approx(40000, abs=2 * int(p2docs["tokens"].max()))
    rec = read_record(str(out), "mix")
    assert rec["docs_in"] == rec["docs_out"] + sum(rec["dropped"].values())
    assert rec["dropped"]["mix_where"] > 0  # phase 2 leaves out the intermediate-level articles
    assert (
        rec["tokens_out"]
        == p1["tokens"] + json.loads((out / "mix" / "phase2" / "manifest.json").read_text())["tokens"]
    )
    assert not (out / "mix" / "_tokenized").exists()


@pytest.mark.slow  # three mix runs
def test_same_seed_same_bytes_other_seed_other_order(ray_local, upstream, tmp_path):
    a = _run(upstream, tmp_path, name="a")
    b = _run(upstream, tmp_path, name="b")
    other = copy.deepcopy(MIX)
    other["seed"] = 8
    c = _run(upstream, tmp_path, mix=other, name="c")
    for phase in ("phase1", "phase2"):
        files = _files(a / "mix" / phase)
        assert files == _files(b / "mix" / phase)
        assert any(f.parent.name == "documents.parquet" for f in files)
        for f in files:  # the manifests name their own directory (absolute blend prefixes): a's, b's
            here = (a / "mix" / phase / f).read_bytes().replace(str(a).encode(), str(b).encode())
            assert here == (b / "mix" / phase / f).read_bytes(), f
        ids_a = pq.read_table(a / "mix" / phase / "documents.parquet")["id"].to_pylist()
        ids_c = pq.read_table(c / "mix" / phase / "documents.parquet")["id"].to_pylist()
        assert ids_a != ids_c
        assert (a / "mix" / phase / "shard_00000.bin").read_bytes() != (
            c / "mix" / phase / "shard_00000.bin"
        ).read_bytes()
    # phase 1 takes every web document once in any order: the same multiset, another order
    p1a = pq.read_table(a / "mix" / "phase1" / "documents.parquet").to_pandas()
    p1c = pq.read_table(c / "mix" / "phase1" / "documents.parquet").to_pandas()
    web = lambda d: sorted(d[d["source"] == "web"]["id"])  # noqa: E731
    assert web(p1a) == web(p1c)


def _files(directory) -> list:
    """Every file under a phase directory (documents.parquet is a directory of parts), relative to it."""
    return sorted(p.relative_to(directory) for p in directory.rglob("*") if p.is_file())


def test_read_tasks_cover_every_row_once_largest_first(tmp_path, monkeypatch):
    """The tokenization plan: every document of every stage in exactly one task, in the task's stated place;
    small row groups merged, a large one split, the largest task first."""
    from pipeline.stages.mix import stage as mix

    arts = _articles()[:90]
    rows = lambda n, at: [{"id": f"{at}{i:03d}", "text": r["text"]} for i, r in enumerate(arts[:n])]  # noqa: E731
    _write_stage(tmp_path, "small_groups", rows(60, "a"), parts=3, row_group_size=2)
    _write_stage(tmp_path, "one_group", rows(90, "b"))
    files = {
        stage: storage.list_files(str(tmp_path / stage), suffix=".parquet")
        for stage in ("small_groups", "one_group")
    }
    monkeypatch.setattr(mix, "TASK_BYTES", 40_000)  # a few articles per task
    tasks = mix._read_tasks(files, cores=1)

    assert [t["task"] for t in tasks] == list(range(len(tasks)))
    # names (of parts and their commits, which a resumed run reuses): unique, the same for the same rows
    assert len({t["name"] for t in tasks}) == len(tasks)
    assert [t["name"] for t in mix._read_tasks(files, cores=1)] == [t["name"] for t in tasks]
    assert [t["bytes"] for t in tasks] == sorted((t["bytes"] for t in tasks), reverse=True)
    assert any(t["last"] - t["first"] > 1 for t in tasks if t["stage"] == "small_groups")  # merged
    assert sum(t["stage"] == "one_group" for t in tasks) > 1  # split
    for stage, n in (("small_groups", 60), ("one_group", 90)):
        ids = pq.read_table(str(tmp_path / stage))["id"].to_pylist()
        seen = [None] * n
        for t in (t for t in tasks if t["stage"] == stage):
            got = (
                pq.ParquetFile(t["path"])
                .read_row_groups(range(t["first"], t["last"]))["id"]
                .to_pylist()[t["start"] : t["stop"]]
            )
            for k, doc in enumerate(got):
                assert seen[t["row"] + k] is None, "a row in two tasks"
                seen[t["row"] + k] = doc
        assert seen == ids


def test_mix_runs_with_fewer_free_cpus_than_the_cluster_has(ray_local, upstream, tmp_path):
    """Another job holds one of the two CPUs: the tokenizing actor pool starts with what it gets and the
    shards are the same as with both CPUs."""
    hog = ray_local.remote(num_cpus=1)(type("Hog", (), {"ping": lambda self: 1})).remote()
    ray_local.get(hog.ping.remote())
    try:
        busy = _run(upstream, tmp_path, name="busy")
    finally:
        ray_local.kill(hog)
    free = _run(upstream, tmp_path, name="free")
    for phase in ("phase1", "phase2"):
        assert _files(busy / "mix" / phase) == _files(free / "mix" / phase)
        for f in _files(free / "mix" / phase):
            # manifests name their shards by absolute path: compare with the output path swapped
            there = (busy / "mix" / phase / f).read_bytes().replace(str(busy).encode(), str(free).encode())
            assert there == (free / "mix" / phase / f).read_bytes(), f


def test_impossible_recipe_names_the_numbers(ray_local, upstream, tmp_path):
    mix = copy.deepcopy(MIX)
    mix["phase2"]["tokens"] = 2_000_000
    with pytest.raises(UserError) as e:
        _run(upstream, tmp_path, mix=mix, name="impossible")
    msg = str(e.value)
    assert "mix.phase2: impossible recipe" in msg
    assert (
        "source 'web_edu' (stage dedup, where edu_score >= 0.7 and source == web/onestopenglish) needs "
        "1,200,000 tokens" in msg
    )
    assert "x max_epochs 1 =" in msg and "raise its max_epochs to" in msg
    assert "source 'synth'" in msg and "x max_epochs 4 =" in msg


def test_missing_where_column_is_a_user_error(ray_local, upstream, tmp_path):
    mix = copy.deepcopy(MIX)
    mix["phase2"]["sources"][1]["where"] = ["edu_score >= 0.5"]  # synth has no edu_score column
    with pytest.raises(UserError, match=r"stage 'synth' has no column\(s\) \['edu_score'\]"):
        _run(upstream, tmp_path, mix=mix, name="nocol")


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda m: m["phase1"]["sources"][0].update(weight=0.5),
            r"mix\.phase1: source weights must sum to 1, got 0\.7 \(web=0\.5, synth=0\.2\)",
        ),
        (
            lambda m: m["phase2"]["sources"][0].update(where=["edu_score => 0.6"]),
            r"mix\.phase2\.sources\[0\]\.where: rule 'edu_score => 0\.6' is not 'COLUMN OP VALUE'",
        ),
        (
            lambda m: m["phase1"]["sources"][1].update(tokens=100),
            r"source 'synth': give exactly one of 'weight'",
        ),
        (lambda m: m["phase1"]["sources"][1].update(stage="mix"), r"mix\.phase1\.sources\[1\]\.stage"),
        (lambda m: m.pop("phase2"), r"mix\.phase2: required key is missing"),
    ],
)
def test_recipe_config_errors_name_the_key(tmp_path, change, expected):
    mix = copy.deepcopy(MIX)
    change(mix)
    with pytest.raises(UserError, match=expected):
        _config(tmp_path, mix)


def _received(x) -> int:
    """How many values an object the driver received holds (rows, array elements, fields)."""
    if isinstance(x, pa.Table):
        return x.num_rows
    if isinstance(x, np.ndarray):
        return x.size
    if isinstance(x, dict):
        return sum(_received(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(_received(v) for v in x)
    if hasattr(x, "__dataclass_fields__"):
        return sum(_received(getattr(x, f)) for f in x.__dataclass_fields__)
    return 1


def _count_driver_receipts(monkeypatch) -> list[int]:
    """Every value that mix's code on the driver takes from Ray (ray.get, a Dataset's rows or batches)."""
    import sys

    import ray

    got = []

    def from_mix() -> bool:
        return sys._getframe(2).f_globals.get("__name__", "").startswith("pipeline.stages.mix")

    def wrap(name, make):
        original = getattr(ray.data.Dataset, name)
        monkeypatch.setattr(ray.data.Dataset, name, make(original))

    get = ray.get

    def counted_get(*a, **kw):
        out = get(*a, **kw)
        if from_mix():
            got.append(_received(out))
        return out

    monkeypatch.setattr(ray, "get", counted_get)
    for name in ("take_all", "take", "to_pandas", "to_arrow_refs", "take_batch"):
        wrap(name, lambda f: lambda self, *a, **kw: got.append(_received(r := f(self, *a, **kw))) or r)

    def iterating(f):
        def it(self, *a, **kw):
            for batch in f(self, *a, **kw):
                got.append(_received(batch))
                yield batch

        return it

    for name in ("iter_batches", "iter_rows"):
        wrap(name, iterating)
    return got


def _tiny_docs_upstream(out, n: int) -> None:
    words = ["river", "engine", "garden", "violin", "planet", "harbor", "forest", "market"]
    rows = [
        {
            "id": f"d{i:06d}",
            "text": f"Note {i}: the {words[i % 8]} near the {words[(i * 5) % 8]} was quiet today.",
            "source": "web/notes",
            "edu_score": (i % 10) / 10,
        }
        for i in range(n)
    ]
    _write_stage(out, "dedup", rows, parts=3, row_group_size=200)
    _write_stage(out, "synth", [{**r, "id": f"s{i:06d}"} for i, r in enumerate(rows[: n // 5])])


def test_the_driver_receives_no_per_document_data(ray_local, tmp_path, monkeypatch):
    """mix over 1,200 and then 3,600 small documents: what the driver takes from Ray (task results,
    tallies, shard rows) does not grow with the documents. Fails if the driver gathers ids, token counts,
    hashes or tokens per document (at least one value per document: thousands more at 3N)."""
    from pipeline.stages.mix import stage as mix

    monkeypatch.setattr(mix, "SELECT_BITS", 4)  # tallies of 16 buckets: small next to the documents
    recipe = {
        "tokenizer": str(PHI3_OFFLINE),
        "seed": 3,
        "shard_tokens": 10_000_000,
        "phase1": {"sources": [{"name": "web", "stage": "dedup", "weight": 1.0}]},
        "phase2": {
            "sources": [
                {"name": "edu", "stage": "dedup", "where": ["edu_score >= 0.5"], "weight": 0.7},
                {"name": "synth", "stage": "synth", "weight": 0.3, "max_epochs": 5},
            ]
        },
    }
    received = {}
    for n in (1200, 3600):
        out = tmp_path / f"n{n}"
        _tiny_docs_upstream(out, n)
        got = _count_driver_receipts(monkeypatch)
        run_pipeline(_config(out, recipe), log=lambda _: None)
        monkeypatch.undo()
        monkeypatch.setattr(mix, "SELECT_BITS", 4)
        rec = read_record(str(out), "mix")
        assert rec["docs_in"] == 2 * n + n // 5  # every document of each source read
        assert (
            sum(len(pq.read_table(out / "mix" / p / "documents.parquet")) for p in ("phase1", "phase2")) > n
        )
        received[n] = sum(got)
    # tallies (16 buckets per source and phase, per tally task), task counts, one row per shard and source
    assert received[3600] < 3600 / 2, received
    assert abs(received[3600] - received[1200]) < 1200 / 10, received


@pytest.mark.slow  # two mix runs
def test_mix_on_an_object_store_writes_the_same_bytes(ray_local, upstream, tmp_path, s3_bucket):
    """Output on an S3-compatible server: the tokenizing tasks and the shard tasks write there directly
    (nothing is staged on a local disk) and the shards are the local run's, byte for byte."""
    import pyarrow.fs as pafs

    local = _run(upstream, tmp_path, name="local")
    remote = f"{s3_bucket}/run"
    fs, root = pafs.FileSystem.from_uri(remote)
    for stage in ("dedup", "synth"):
        pafs.copy_files(str(upstream / stage), f"{root}/{stage}", pafs.LocalFileSystem(), fs)
    run_pipeline(_config(remote), log=lambda _: None)
    assert read_record(remote, "mix")["status"] == "complete"
    assert not storage.exists(f"{remote}/mix/_tokenized")
    back = tmp_path / "back"
    back.mkdir()
    pafs.copy_files(f"{root}/mix", str(back), fs, pafs.LocalFileSystem())
    for phase in ("phase1", "phase2"):
        files = sorted(
            p.relative_to(local / "mix") for p in (local / "mix" / phase).rglob("*") if p.is_file()
        )
        assert files == sorted(p.relative_to(back) for p in (back / phase).rglob("*") if p.is_file())
        for f in files:
            here = (local / "mix" / f).read_bytes()
            if f.name == "manifest.json":
                manifest = json.loads((back / f).read_text())
                assert manifest["dir"] == f"{remote}/mix/{phase}"
                here = here.replace(str(local / "mix").encode(), f"{remote}/mix".encode())
            assert here == (back / f).read_bytes(), f
