"""Dedup: planted exact and near copies of real articles at measured Jaccard are merged, far pairs are not;
the kept document is the deterministic one; every document is kept or dropped with a reason."""

from __future__ import annotations

import io
import json
import random
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from datasketch import MinHashLSH

from pipeline.config import parse_config
from pipeline.stage import StageContext
from pipeline.stages.dedup import stage as dedup_stage
from pipeline.stages.dedup.config import DedupConfig
from pipeline.stages.dedup.core import dedup_dataset
from pipeline.stages.dedup.minhash import shingles
from pipeline.stages.dedup.params import bands_rows_for, detection_probability
from pipeline.tools import cli
from tests.conftest import DATA

OSE = DATA / "demo" / "onestopenglish.jsonl.zst"


def ose_rows() -> list[dict]:
    """The bundled OneStopEnglish files: {"id": path, "text"}; `Int-Txt/Int-Txt/` holds a second copy of
    the intermediate texts (natural near duplicates)."""
    with zstandard.ZstdDecompressor().stream_reader(OSE.open("rb")) as f:
        return [json.loads(line) for line in io.TextIOWrapper(f, encoding="utf-8")]


def articles(level: str, n: int) -> list[dict]:
    """Real OneStopEnglish articles of one reading level (Adv, Int, Ele), in file order, without the
    copies."""
    return [r for r in ose_rows() if f"/{level}-Txt/" in r["id"] and "/Int-Txt/Int-Txt/" not in r["id"]][:n]


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a, 5), shingles(b, 5)
    return len(sa & sb) / len(sa | sb)


def near_copy(text: str, edits: int, seed: int) -> str:
    """A crawl-like near copy: `edits` words replaced at random places (each edit breaks up to 5 shingles)."""
    rng = random.Random(seed)
    words = text.split()
    for i in rng.sample(range(len(words)), edits):
        words[i] = f"edit{rng.randrange(10**6)}"
    return " ".join(words)


def table(docs: list[tuple[str, str]], scores: list[float] | None = None) -> pa.Table:
    cols = {
        "id": [d[0] for d in docs],
        "text": [d[1] for d in docs],
        "source": ["web/test"] * len(docs),
        "url": [None] * len(docs),
        "meta": ["{}"] * len(docs),
    }
    if scores is not None:
        cols["edu_score"] = scores
    return pa.table(cols)


def run(
    ray, docs: pa.Table, cfg: DedupConfig | None = None, blocks: int = 3, reference: pa.Table | None = None
) -> dict:
    cfg = cfg or DedupConfig()
    ds = ray.data.from_arrow(docs).repartition(blocks)
    ref = ray.data.from_arrow(reference) if reference is not None else None
    with tempfile.TemporaryDirectory(prefix="dedup-test-") as work_dir:
        out, _ = dedup_dataset(ds, cfg, work_dir, reference=ref)
        return {r["id"]: r for r in out.take_all()}


def test_band_math_matches_fineweb_and_datasketch():
    # datatrove's documented figure
    assert detection_probability(0.8, 14, 8) == pytest.approx(0.924, abs=1e-3)
    for threshold in (0.5, 0.7, 0.85):
        lsh = MinHashLSH(threshold=threshold, num_perm=128)
        assert bands_rows_for(threshold, 128) == (lsh.b, lsh.r)


def test_planted_duplicates_found_far_pairs_not(ray_local):
    adv = articles("Adv", 12)
    docs = [(f"a{i:02d}", a["text"]) for i, a in enumerate(adv)]
    base = docs[0][1]
    exact = ("z-exact", "  " + base.upper().replace(" ", "\n "))  # case and whitespace only
    near = [(f"z-near{k}", near_copy(docs[k][1], edits, seed=k)) for k, edits in ((1, 3), (2, 8), (3, 15))]
    far = [(f"z-int{i}", a["text"]) for i, a in enumerate(articles("Int", 4))]  # graded rewrites of a00..a03
    sims = {d[0]: jaccard(d[1], docs[int(d[0][-1])][1]) for d in near}
    far_sims = [jaccard(d[1], docs[int(d[0][-1])][1]) for d in far]
    assert all(s >= 0.8 for s in sims.values()) and max(far_sims) < 0.6, (sims, far_sims)

    out = run(ray_local, table(docs + [exact] + near + far))

    assert len(out) == len(docs) + 1 + len(near) + len(far)
    assert (out["z-exact"]["drop_reason"], out["z-exact"]["drop_detail"]) == ("exact_dup", "a00")
    for d in near:  # the original has the smaller id, so it is kept
        assert (out[d[0]]["drop_reason"], out[d[0]]["drop_detail"]) == ("near_dup", f"a0{d[0][-1]}"), sims
    for d in far:
        assert out[d[0]]["drop_reason"] is None and out[d[0]]["dup_cluster_size"] == 1
    assert out["a00"]["drop_reason"] is None and out["a00"]["dup_cluster"] == "a00"
    assert out["a00"]["dup_cluster_size"] == 2 and out["a01"]["dup_cluster_size"] == 2
    assert out["z-near1"]["dup_cluster"] == "a01"
    assert sum(r["drop_reason"] is None for r in out.values()) == len(docs) + len(far)


def test_kept_document_is_deterministic(ray_local):
    text = articles("Adv", 1)[0]["text"]
    copies = [(f"c{i}", near_copy(text, 2, seed=i)) for i in range(5)]
    scores = [0.2, 0.9, 0.5, 0.9, 0.1]  # c1 and c3 tie on the highest score: c1 has the smaller id
    forward = run(ray_local, table(copies, scores), blocks=2)
    backward = run(ray_local, table(copies[::-1], scores[::-1]), blocks=5)
    for out in (forward, backward):
        assert [i for i, r in sorted(out.items()) if r["drop_reason"] is None] == ["c1"]
        assert {r["drop_detail"] for r in out.values() if r["drop_reason"]} == {"c1"}
        assert all(r["dup_cluster"] == "c1" and r["dup_cluster_size"] == 5 for r in out.values())
    no_score = run(ray_local, table(copies), blocks=2)  # without edu_score: smallest id
    assert [i for i, r in sorted(no_score.items()) if r["drop_reason"] is None] == ["c0"]


def test_reference_documents_win_and_earlier_drops_pass_through(ray_local):
    web = articles("Adv", 3)
    reference = table([(f"w{i}", a["text"]) for i, a in enumerate(web)], [0.0] * 3)  # low score: still wins
    synth = table(
        [
            ("s0", near_copy(web[0]["text"], 3, seed=1)),
            ("s1", web[1]["text"]),
            ("s2", articles("Ele", 3)[2]["text"]),
            ("s3", web[2]["text"]),
            ("s4", near_copy(web[0]["text"], 4, seed=2)),
        ],
        [1.0] * 5,
    )
    synth = synth.append_column("drop_reason", pa.array([None, None, None, "too_short", None], pa.string()))
    synth = synth.append_column("drop_detail", pa.array([None, None, None, "12 words", None], pa.string()))
    out = run(ray_local, synth, reference=reference)
    assert set(out) == {"s0", "s1", "s2", "s3", "s4"}  # reference documents are not returned
    assert (out["s0"]["drop_reason"], out["s0"]["drop_detail"]) == ("near_dup", "w0")
    assert (out["s4"]["drop_reason"], out["s4"]["drop_detail"]) == ("near_dup", "w0")
    assert (out["s1"]["drop_reason"], out["s1"]["drop_detail"]) == ("exact_dup", "w1")
    assert out["s2"]["drop_reason"] is None
    assert (out["s3"]["drop_reason"], out["s3"]["drop_detail"]) == ("too_short", "12 words")


def test_stage_accounting_identity_and_outputs(ray_local, tmp_path):
    adv = articles("Adv", 8)
    docs = [(f"d{i}", a["text"]) for i, a in enumerate(adv)]
    docs += [
        ("e0", adv[0]["text"]),
        ("e1", adv[0]["text"]),
        ("n0", near_copy(adv[1]["text"], 3, seed=0)),
        ("empty", ""),
    ]
    config = parse_config(
        {"ingest": {"inputs": [{"path": str(OSE), "source": "web/x"}]}, "dedup": {"exact": True}}
    )
    upstream = {"select": ray_local.data.from_arrow(table(docs))}
    ctx = StageContext("dedup", config, str(tmp_path), str(tmp_path / "work"), upstream.__getitem__)
    result = dedup_stage.run(ctx)
    written = result.parts
    assert written.docs_in == len(docs) and written.parts >= 2  # a part per shuffle partition
    assert len(docs) == written.docs_out + sum(written.dropped.values())
    assert not (tmp_path / "work" / "_steps").exists()  # the shuffles' files go once the parts are committed
    assert written.dropped == {"exact_dup": 2, "near_dup": 1}
    kept = pq.read_table(sorted((tmp_path / "work").glob("*.parquet")))
    assert {"dup_cluster", "dup_cluster_size"} <= set(kept.column_names)
    assert "drop_reason" not in kept.column_names
    assert result.details["bands"] == 14 and result.details["clusters"] == 2


def test_validate_prints_detection_probabilities(write_config, capsys):
    path = write_config(
        {"ingest": {"inputs": [{"path": str(OSE), "source": "web/x"}]}, "dedup": {"threshold": 0.75}}
    )
    assert cli.main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    for j in ("0.5", "0.7", "0.8", "0.9"):
        assert f"J={j}: " in out
    bad = write_config(
        {"ingest": {"inputs": [{"path": str(OSE), "source": "web/x"}]}, "dedup": {"bands": 30, "rows": 8}},
        "bad.yaml",
    )
    assert cli.main(["validate", str(bad)]) == 2
    assert "dedup: bands x rows = 30 x 8 = 240 exceeds num_perm = 112" in capsys.readouterr().err
