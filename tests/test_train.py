"""The trainer end to end on CPU: Megatron shards of real text, phase 1 then phase 2, loss, checkpoints, exact
resume."""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import zstandard
from safetensors.torch import load_file

from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.shards import IndexedDatasetWriter
from pipeline.stages.train.stage import train_command
from pipeline.tokenizer import PHI3_OFFLINE, encode_with_eos, load_tokenizer
from pipeline.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
SEQ, MICRO = 32, 2
TRAIN = {
    "seq_len": SEQ,
    "micro_batch": MICRO,
    "lr": 5e-3,
    "warmup_steps": 2,
    "heldout_sequences": 2,
    "eval_every": 3,
    "checkpoint_every": 2,
    "save_model": True,
}


def _articles(level: str, n: int, skip: int = 0) -> list[str]:
    """OneStopEnglish articles (tests/data/demo) of one reading level: 'Adv' or 'Ele'."""
    raw = zstandard.ZstdDecompressor().stream_reader(
        open(ROOT / "tests/data/demo/onestopenglish.jsonl.zst", "rb")
    )
    rows = [json.loads(line) for line in io.TextIOWrapper(raw, encoding="utf-8")]
    return [r["text"] for r in rows if f"/{level}-Txt/" in r["id"]][skip : skip + n]


def _write_shard(prefix: Path, docs: list[list[int]]) -> int:
    with IndexedDatasetWriter(str(prefix)) as w:
        for d in docs:
            w.add_document(d)
    return w.tokens


DOC_TOKENS = 150  # each document cut to this many tokens + EOS


def write_mix(output: Path, vocab_size: int = 32011) -> dict:
    """OUTPUT/mix/phase{1,2} as the mix stage lays them out: shards of real tokenized text and manifests.

    phase1: 3 advanced and 3 elementary articles, interleaved, with `documents.parquet` (the trainer holds out
    per source); phase2: 2 advanced articles, no `documents.parquet` (the trainer holds out the stream's end).
    """
    tok = load_tokenizer(PHI3_OFFLINE)

    def docs(texts):
        return [ids[:DOC_TOKENS] + [tok.eos_token_id] for ids in encode_with_eos(tok, texts)]

    plan = {
        "phase1": {"web/adv": docs(_articles("Adv", 3)), "web/ele": docs(_articles("Ele", 3))},
        "phase2": {"web/adv": docs(_articles("Adv", 2, skip=3))},
    }
    manifests = {}
    for phase, sources in plan.items():
        d = output / "mix" / phase
        d.mkdir(parents=True)
        stream = [
            (s, doc)
            for group in zip(*[[(s, x) for x in ds] for s, ds in sources.items()])
            for s, doc in group
        ]
        tokens = _write_shard(d / "shard_00000", [doc for _, doc in stream])
        if phase == "phase1":
            pq.write_table(
                pa.table(
                    {
                        "shard": pa.array([0] * len(stream), pa.int32()),
                        "index": list(range(len(stream))),
                        "source": [s for s, _ in stream],
                    }
                ),
                d / "documents.parquet",
            )
        m = {
            "phase": phase,
            "tokenizer": PHI3_OFFLINE,
            "vocab_size": vocab_size,
            "tokens": tokens,
            "sources": {
                s: {"tokens": sum(map(len, ds)), "docs": len(ds), "weight": 1.0, "epochs": 1.0}
                for s, ds in sources.items()
            },
            "shards": ["shard_00000"],
            "blend": "1.0 shard_00000",
            "stream": stream,  # for the tests' own checks; the trainer ignores unknown keys
        }
        (d / "manifest.json").write_text(json.dumps({k: v for k, v in m.items() if k != "stream"}))
        manifests[phase] = m
    return manifests


def _config(write_config, tmp_path, name: str, **train):
    out = tmp_path / name
    manifests = write_mix(out)
    path = write_config(
        {
            "run": {"name": name, "output": str(out)},
            "ingest": {"inputs": [{"path": "tests/data/demo/onestopenglish.jsonl.zst", "source": "web/ose"}]},
            "train": {**TRAIN, **train},
        },
        name=f"{name}.yaml",
    )
    return path, out, manifests


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted run through `phicurate train`, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("train")
    cfg = {
        "run": {"name": "full", "output": str(tmp / "full")},
        "ray": {"num_cpus": 2},
        "ingest": {"inputs": [{"path": "tests/data/demo/onestopenglish.jsonl.zst", "source": "web/ose"}]},
        "train": TRAIN,
    }
    manifests = write_mix(tmp / "full")
    path = tmp / "full.yaml"
    path.write_text(json.dumps(cfg))
    assert main(["train", str(path)]) == 0
    return path, tmp / "full", manifests


def test_trains_phase1_then_phase2_for_their_budgets_and_loss_falls(full_run):
    _, out, manifests = full_run
    rows = [r for r in _metrics(out) if "loss" in r]
    phases = [r["phase"] for r in rows]
    n1, n2 = phases.count("phase1"), phases.count("phase2")
    assert phases == ["phase1"] * n1 + ["phase2"] * n2  # phase 1 first, then phase 2, no interleaving
    # budgets: phase 1 trains every window that ends before its held-out documents (the last article of each
    # source: the 5th and 6th documents), phase 2 every window less its held-out tail, in whole steps
    first_heldout = 4 * (DOC_TOKENS + 1)
    windows1 = [i for i in range((manifests["phase1"]["tokens"] - 1) // SEQ) if i * SEQ + SEQ < first_heldout]
    seqs2 = (manifests["phase2"]["tokens"] - 1) // SEQ - TRAIN["heldout_sequences"]
    assert (n1, n2) == (len(windows1) // MICRO, seqs2 // MICRO)
    assert rows[-1]["tokens"] == (n1 + n2) * MICRO * SEQ
    losses = [r["loss"] for r in rows]
    assert np.mean(losses[-3:]) < np.mean(losses[:2]) - 0.5  # from ~10.4 (uniform over 32,064 rows) down
    record = json.loads((out / "train" / "_stage.json").read_text())
    assert record["status"] == "complete" and record["tokens_out"] == rows[-1]["tokens"]
    assert record["docs_out"] == (n1 + n2) * MICRO and record["docs_in"] == record["docs_out"] + sum(
        record["dropped"].values()
    )
    assert (out / "train" / "loss.png").stat().st_size > 10_000


def test_heldout_documents_are_never_trained_on(full_run):
    from train_handoff.config import TrainConfig
    from train_handoff.phases import load_phases

    _, out, manifests = full_run
    phases, _ = load_phases(TrainConfig(**TRAIN), str(out / "mix"))
    stream = manifests["phase1"]["stream"]
    # per source: sequences of its last article only, which starts at the 5th (adv) and 6th (ele) document
    for source, k in (("web/adv", 4), ("web/ele", 5)):
        held = phases[0].heldout[source]
        assert held.shape == (TRAIN["heldout_sequences"], SEQ + 1)
        assert stream[k][0] == source
        assert [row.tolist() for row in held] == [
            stream[k][1][i * SEQ : i * SEQ + SEQ + 1] for i in range(len(held))
        ]
    last_trained = max(phases[0].order) * SEQ + SEQ  # the last token a training window of phase 1 reads
    assert last_trained < 4 * (DOC_TOKENS + 1)


def test_heldout_loss_per_source_falls(full_run):
    _, out, _ = full_run
    held = [r["heldout"] for r in _metrics(out) if "heldout" in r]
    assert set(held[0]) == set(held[-1]) == {"phase1/web/adv", "phase1/web/ele", "phase2/all"}
    first = held[0]
    assert all(held[-1][k] < first[k] for k in first)


def test_runner_skips_an_unchanged_train_stage(full_run, ray_local):
    from pipeline.runner import run_pipeline

    path, _, _ = full_run
    [record] = run_pipeline(load_config(path), stages=["train"], log=lambda _: None)
    assert record.get("skipped") and record["stage"] == "train"


def test_final_model_loads_in_transformers(full_run):
    from transformers import Phi3ForCausalLM

    _, out, _ = full_run
    model = Phi3ForCausalLM.from_pretrained(out / "train" / "model")
    assert model.config.vocab_size == 32064 and model.config.eos_token_id == 32000
    assert model.model.embed_tokens.weight.shape == (32064, 128)


def test_resume_continues_exactly(full_run, tmp_path, capsys):
    """Stopped after 3 steps (a checkpoint mid phase 1), then resumed: the same losses step for step and the
    same
    final weights, bit for bit, as the uninterrupted run."""
    path, full_out, _ = full_run
    out = tmp_path / "resumed"
    write_mix(out)
    assert main(["train", str(path), "--output", str(out), "--stop-after", "3"]) == 0
    assert not (out / "train").exists()  # an unfinished run leaves no stage directory, only its state
    assert sorted(p.name for p in (out / ".train-state" / "checkpoints").iterdir()) == [
        "step-0000002",
        "step-0000003",
    ]
    other = tmp_path / "other-seed.yaml"  # another seed orders the sequences differently: no resume on it
    cfg = json.loads(path.read_text())
    other.write_text(json.dumps({**cfg, "train": {**cfg["train"], "seed": 1}}))
    assert main(["train", str(other), "--output", str(out), "--resume"]) == 2
    assert "was written for other data or batch settings" in capsys.readouterr().err
    assert main(["train", str(path), "--output", str(out), "--resume"]) == 0
    ours = [(r["step"], r["phase"], r.get("loss"), r.get("heldout")) for r in _metrics(out)]
    theirs = [(r["step"], r["phase"], r.get("loss"), r.get("heldout")) for r in _metrics(full_out)]
    assert ours == theirs
    a = load_file(out / "train" / "model" / "model.safetensors")
    b = load_file(full_out / "train" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_manifest_vocab_beyond_the_model_is_a_clear_error(write_config, tmp_path):
    path, out, _ = _config(write_config, tmp_path, "bigvocab", vocab_size=32000)
    with pytest.raises(
        UserError,
        match=r"mix/phase1/manifest.json: the tokenizer has 32011 tokens but train.vocab_size is 32000",
    ):
        train_command(load_config(path))


def test_resume_without_checkpoint_and_missing_mix_are_user_errors(write_config, tmp_path, capsys):
    path, out, _ = _config(write_config, tmp_path, "nockpt")
    assert main(["train", str(path), "--resume"]) == 2
    assert "--resume: no complete checkpoint under" in capsys.readouterr().err
    (out / "mix" / "phase2" / "manifest.json").unlink()
    assert main(["train", str(path)]) == 2
    assert "mix/phase2/manifest.json: no manifest; the mix stage writes it" in capsys.readouterr().err


def test_token_ids_beyond_the_embedding_stop_training_with_a_clear_error(write_config, tmp_path):
    # the training path
    path, out, manifests = _config(write_config, tmp_path, "foreign-ids", heldout_sequences=0)
    # shards from another tokenizer: every document of phase 1 starts with id 40000, beyond 32,064 rows
    _write_shard(
        out / "mix" / "phase1" / "shard_00000",
        [[40000, *doc[1:]] for _, doc in manifests["phase1"]["stream"]],
    )
    with pytest.raises(
        UserError, match=r"phase1: sequence \d+ holds token id 40000, beyond the model's 32064 embedding rows"
    ):
        train_command(load_config(path))


def test_manifest_vocab_below_the_tokenizers_eos_is_a_clear_error(write_config, tmp_path):
    path, out, _ = _config(write_config, tmp_path, "smallvocab")
    for phase in ("phase1", "phase2"):
        m = out / "mix" / phase / "manifest.json"
        m.write_text(json.dumps({**json.loads(m.read_text()), "vocab_size": 100}))
    with pytest.raises(
        UserError, match=r"phase1/manifest.json: vocab_size is 100 but the tokenizer's EOS id is 32000"
    ):
        train_command(load_config(path))
