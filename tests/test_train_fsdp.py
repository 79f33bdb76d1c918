"""The multi-process path (torchrun, FSDP2) on CPU with the gloo backend: two ranks shard the tiny model.

What this checks here: sharding, the split of each global batch over the ranks, sharded checkpoints and an
exact
resume under FSDP. What it cannot check here: NCCL, CUDA and speed on GPUs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_train import write_mix

from pipeline.tools.cli import main

ROOT = Path(__file__).resolve().parent.parent
TRAIN = {
    "seq_len": 32,
    "micro_batch": 2,
    "lr": 5e-3,
    "warmup_steps": 2,
    "heldout_sequences": 2,
    "eval_every": 3,
    "checkpoint_every": 2,
    "precision": "fp32",
    "device": "cpu",
    "save_model": False,
}


def _config(tmp_path: Path, name: str, **train) -> Path:
    out = tmp_path / name
    write_mix(out)
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "run": {"name": name, "output": str(out)},
                "ingest": {
                    "inputs": [{"path": "tests/data/demo/onestopenglish.jsonl.zst", "source": "web/ose"}]
                },
                "train": {**TRAIN, **train},
            }
        )
    )
    return path


def _torchrun(config: Path, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "-m",
        "pipeline",
        "train",
        str(config),
        *args,
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _losses(config: Path) -> list[tuple]:
    out = Path(yaml.safe_load(config.read_text())["run"]["output"])
    rows = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["phase"], r.get("loss"), r.get("heldout")) for r in rows]


def _weights(config: Path) -> dict:
    """The final model's tensors (OUTPUT/train/model/, gathered from the ranks' shards)."""
    out = Path(yaml.safe_load(config.read_text())["run"]["output"])
    return load_file(str(out / "train" / "model" / "model.safetensors"))


@pytest.mark.slow
def test_fsdp_two_ranks_match_one_process_and_resume_exactly(tmp_path):
    # two ranks x micro_batch 2 see the same global batches as one process with grad_accum 2
    sharded = _config(tmp_path, "fsdp", save_model=True)
    _torchrun(sharded)
    single = _config(tmp_path, "single", grad_accum=2)
    assert main(["train", str(single)]) == 0
    a, b = _losses(sharded), _losses(single)
    assert [r[:2] for r in a] == [r[:2] for r in b]
    for (_, _, la, ha), (_, _, lb, hb) in zip(a, b):
        if la is not None:
            assert la == pytest.approx(lb, abs=2e-4)  # fp32; only the order of the gradient reduction differs
        if ha is not None:
            assert ha.keys() == hb.keys() and all(ha[k] == pytest.approx(hb[k], abs=2e-4) for k in ha)

    resumed = _config(tmp_path, "fsdp-resumed", save_model=True)
    _torchrun(resumed, "--stop-after", "3")
    ckpt = (
        Path(yaml.safe_load(resumed.read_text())["run"]["output"])
        / ".train-state"
        / "checkpoints"
        / "step-0000003"
    )
    assert sorted(p.name for p in ckpt.glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]  # one shard per rank
    _torchrun(resumed, "--resume")
    assert _losses(resumed) == a
    # the weights, not only the losses: the resumed run ends with the uninterrupted run's model, bit for bit
    want, got = _weights(sharded), _weights(resumed)
    assert want.keys() == got.keys() and len(want) > 10
    assert [k for k in want if not torch.equal(want[k], got[k])] == []
