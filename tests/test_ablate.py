"""`phicurate ablate`: a real ablation at test size (real ingest, mix, trainer steps and evaluation on Ray).

Two arms, two seeds: `raw` (ingest's output without the held-out sets) and `heldout-leak` (the held-out
educational documents themselves), so the harness must see the leak as a lower held-out loss.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
import zstandard

from pipeline.errors import UserError
from tests.conftest import DATA

N = 13


def _articles(path: Path, n: int = 60) -> str:
    """The first `n` articles of the bundled OneStopEnglish set at every reading level they come in (the
    levels share sentences: the n-gram check has real near-copies of held-out documents to find)."""
    raw = zstandard.ZstdDecompressor().stream_reader(open(DATA / "demo" / "onestopenglish.jsonl.zst", "rb"))
    rows = [json.loads(line) for line in raw.read().decode().splitlines()]
    title = {r["id"]: r["id"].rsplit("/", 1)[-1].rsplit("-", 1)[0].lower() for r in rows}
    keep = set(sorted(set(title.values()))[:n])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if title[r["id"]] in keep))
    return str(path)


def _config(tmp_path: Path) -> dict:
    return {
        "run": {"name": "abl", "output": str(tmp_path / "base")},
        "ray": {"num_cpus": 2, "object_store_memory_mb": 512, "progress_bars": False},
        "ingest": {
            "inputs": [{"path": _articles(tmp_path / "articles.jsonl"), "source": "web/onestopenglish"}]
        },
        "mix": {
            "tokenizer": "tests/data/tokenizer/phi3",
            "shard_tokens": 100000,
            "phase1": {"sources": [{"name": "all", "stage": "ingest", "weight": 1.0}]},
            "phase2": {"sources": [{"name": "all", "stage": "ingest", "weight": 1.0}]},
        },
        "train": {
            "model": "tiny",
            "seq_len": 32,
            "micro_batch": 2,
            "lr": 0.003,
            "warmup_steps": 2,
            "device": "cpu",
            "checkpoint_every": 1000,
        },
    }


def _spec(tmp_path: Path, base: Path, **over) -> Path:
    spec = {
        "base": str(base),
        "output": str(tmp_path / "ablate"),
        "arms": ["raw", "heldout-leak"],
        "seeds": 2,
        "tokens": 1536,  # 2 phases x 12 steps of 2 x 32 tokens
        "num_cpus": 1,
        "heldout": {
            "edu": {
                "sources": ["web/onestopenglish"],
                "fraction": 0.05,
                "max_docs": 6,
                "max_tokens_per_doc": 96,
            },
            "benchmarks": {
                "mmlu": {
                    "path": "pipeline/stages/decontaminate/data/mmlu-test.jsonl.gz",
                    "kind": "mmlu",
                    "max_items": 24,
                },
                "gsm8k": {
                    "path": "pipeline/stages/decontaminate/data/gsm8k-test.jsonl.gz",
                    "kind": "gsm8k",
                    "max_items": 8,
                },
            },
        },
        **over,
    }
    p = tmp_path / "ablate.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


@pytest.fixture(scope="module")
def ablation(tmp_path_factory, ray_local):
    from pipeline.tools.ablate.run import ablate
    from pipeline.tools.ablate.spec import load_spec

    tmp = tmp_path_factory.mktemp("ablate")
    base = tmp / "base.yaml"
    base.write_text(yaml.safe_dump(_config(tmp)))
    spec, config = load_spec(str(_spec(tmp, base)))
    return tmp, spec, config, ablate(spec, config)


def _ngrams(text: str) -> set[tuple[str, ...]]:
    from pipeline.stages.decontaminate.index import normalize

    w = normalize(text)
    return {tuple(w[i : i + N]) for i in range(len(w) - N + 1)}


@pytest.mark.slow
def test_heldout_sets_are_the_same_for_every_arm_and_absent_from_the_arms(ablation):
    tmp, spec, _, out = ablation
    abl = tmp / "ablate"
    sets = json.loads((abl / "heldout" / "sets.json").read_text())
    assert {r["arm"] for r in out["runs"]} == {"raw", "heldout-leak"}
    keys = {
        json.dumps(
            json.loads((abl / "runs" / r["arm"] / f"seed-{r['seed']}" / "eval.json").read_text())["key"][
                "sets"
            ]
        )
        for r in out["runs"]
    }
    assert keys == {json.dumps(sets["fingerprint"])}
    # every run scored the same number of tokens of every set
    for m in ("edu", "mmlu", "gsm8k"):
        assert len({r["eval"][m]["tokens"] for r in out["runs"]}) == 1
    held_ids = {i["id"] for i in sets["sets"]["edu"]["items"]}
    assert len(held_ids) == 6
    held_grams = set().union(*(_ngrams(i["text"]) for s in sets["sets"].values() for i in s["items"]))
    assert held_grams
    pool = pq.read_table(abl / "pool" / "ingest").to_pandas().set_index("id")
    trained = pq.read_table(abl / "arms" / "raw" / "mix" / "phase1" / "documents.parquet")["id"].to_pylist()
    trained += pq.read_table(abl / "arms" / "raw" / "mix" / "phase2" / "documents.parquet")["id"].to_pylist()
    assert trained and not held_ids & set(trained)
    for doc_id in set(trained):
        assert not _ngrams(pool.loc[doc_id, "text"]) & held_grams, doc_id
    # the removal is visible: the held-out ids, and other documents sharing their text, kept aside
    dropped = pq.read_table(abl / "pool" / "ingest" / "dropped")
    assert (
        set(pc.filter(dropped["id"], pc.equal(dropped["drop_reason"], "heldout_id")).to_pylist()) == held_ids
    )
    assert out["pools"]["ingest"]["dropped"]["heldout_id"] == 6
    # the leak arm trained on held-out documents only
    leak = set()
    for phase in ("phase1", "phase2"):
        path = abl / "arms" / "heldout-leak" / "mix" / phase / "documents.parquet"
        leak |= set(pq.read_table(path)["id"].to_pylist())
    assert leak and leak <= held_ids


@pytest.mark.slow
def test_statistics_come_from_the_per_seed_losses(ablation):
    tmp, _, _, out = ablation
    for arm in ("raw", "heldout-leak"):
        for m in out["metrics"]:
            per_seed = []
            for seed in (0, 1):
                ev = json.loads((tmp / "ablate" / "runs" / arm / f"seed-{seed}" / "eval.json").read_text())[
                    "eval"
                ][m]
                per_seed.append(ev["accuracy"] if m.endswith("_acc") else ev["loss"])
            s = out["per_arm"][arm][m]
            assert s["values"] == per_seed
            assert s["mean"] == pytest.approx(statistics.mean(per_seed))
            assert s["sd"] == pytest.approx(statistics.stdev(per_seed))
        # the seeds trained different models
        losses = out["per_arm"][arm]["edu"]["values"]
        assert losses[0] != losses[1]
    steps = 2 * (1536 // 2 // 32 // 2)  # phases x (tokens per phase / seq_len / micro_batch)
    assert out["steps"] == steps and {r["train"]["steps"] for r in out["runs"]} == {steps}
    assert 0 <= out["per_arm"]["raw"]["mmlu_acc"]["mean"] <= 1 and out["chance"]["mmlu_acc"] == 0.25
    assert (tmp / "ablate" / "ablation.png").stat().st_size > 10000
    md = (tmp / "ablate" / "ablation.md").read_text()
    assert "| raw |" in md and "| heldout-leak |" in md and "ablation.png" in md
    # the report's section: the same figures, the plot copied beside the report
    from pipeline.tools.ablate.report import html_section

    section = html_section(str(tmp / "ablate"), str(tmp / "report"))
    raw_edu = out["per_arm"]["raw"]["edu"]
    assert f"{raw_edu['mean']:.4f} ± {raw_edu['sd']:.4f}" in section and "heldout-leak" in section
    assert (tmp / "report" / "ablation.png").stat().st_size > 10000
    assert html_section(str(tmp / "nothing"), str(tmp / "report")) is None
    # and `phicurate report BASE` shows it, the arms side by side (the default ablation dir: BASE/ablate)
    from pipeline.tools.report import write_report

    (tmp / "base" / "ablate").symlink_to(tmp / "ablate")
    page = open(write_report(str(tmp / "base")), encoding="utf-8").read()
    assert (
        "Ablation: arms side by side" in page and f"{raw_edu['mean']:.4f}" in page and "heldout-leak" in page
    )


@pytest.mark.slow
def test_a_model_trained_on_the_heldout_text_scores_lower_there(ablation):
    _, _, _, out = ablation
    leak, raw = out["per_arm"]["heldout-leak"]["edu"], out["per_arm"]["raw"]["edu"]
    assert max(leak["values"]) < min(raw["values"])
    (diff,) = [d for d in out["differences"] if d["metric"] == "edu"]
    assert diff["significant"] and diff["better"] == "heldout-leak"
    assert math.isclose(diff["diff"], raw["mean"] - leak["mean"], rel_tol=1e-9) or math.isclose(
        diff["diff"], leak["mean"] - raw["mean"], rel_tol=1e-9
    )


@pytest.mark.slow
def test_the_same_seed_reproduces_the_same_losses(ablation, ray_local):
    from pipeline.tools.ablate.run import train_and_score

    tmp, spec, _, _ = ablation
    run = tmp / "ablate" / "runs" / "raw" / "seed-1"
    cfg = yaml.safe_load((run.parent / "seed-1.yaml").read_text())
    cfg["run"]["output"] = str(tmp / "again")  # trained again from scratch, elsewhere
    task = ray_local.remote(num_cpus=spec.num_cpus)(train_and_score)
    result = ray_local.get(task.remote(cfg, str(tmp / "ablate" / "heldout" / "sets.json")))
    assert result["eval"] == json.loads((run / "eval.json").read_text())["eval"]


def test_spec_errors_name_the_key(tmp_path):
    from pipeline.tools.ablate.spec import load_spec

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(_config(tmp_path)))
    with pytest.raises(UserError, match="arms.*neither built-in"):
        load_spec(str(_spec(tmp_path, base, arms=["raw", "nosuch"])))
    with pytest.raises(UserError, match="seeds"):
        load_spec(str(_spec(tmp_path, base, seeds=0)))


def test_differences_are_called_out_only_beyond_two_sd():
    from pipeline.tools.ablate.stats import compare

    def runs(arm, losses):
        return [{"arm": arm, "seed": s, "eval": {"edu": {"loss": x}}} for s, x in enumerate(losses)]

    apart = compare(runs("a", [1.0, 1.1, 0.9]) + runs("b", [2.0, 2.1, 1.9]), ["a", "b"])
    (d,) = apart["differences"]
    assert d["significant"] and d["better"] == "a"
    assert d["sd"] == pytest.approx(math.sqrt(0.01 / 3 + 0.01 / 3))
    close = compare(runs("a", [1.0, 1.5, 0.5]) + runs("b", [1.2, 1.7, 0.7]), ["a", "b"])
    assert not close["differences"][0]["significant"]
    one_seed = compare(runs("a", [1.0]) + runs("b", [5.0]), ["a", "b"])
    assert not one_seed["differences"][0]["significant"]
