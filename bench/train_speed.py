"""Tokens per second of the trainer against a bare forward/backward/AdamW loop on the same model and batch
size.

Data: the demo corpus's OneStopEnglish articles tokenized with Phi-3's tokenizer into a two-phase mix of
Megatron shards (or an existing run's mix with --mix OUTPUT). The trainer runs through
`train_handoff.trainer.train`
(data reading, bf16 autocast, clipping, schedule, logging) and reports tokens/s per step. The baseline is the
same
tiny Phi-3, the same micro-batch of the same sequences, the same AdamW, under the same autocast, with nothing
else. Rounds alternate so both sides share the noise of a busy machine. The `ratio:` line compares the median
steps; the fastest steps are compared too (on a heavily shared machine the fastest repeat is the least
disturbed). Goal: ratio >= 0.9.

    .venv/bin/python bench/train_speed.py [--steps 8] [--rounds 3] [--seq-len 64] [--micro-batch 4]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import zstandard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pipeline.shards import IndexedDatasetWriter  # noqa: E402
from pipeline.tokenizer import PHI3_OFFLINE, encode_with_eos, load_tokenizer  # noqa: E402
from train_handoff import parallel  # noqa: E402
from train_handoff.config import TrainConfig  # noqa: E402
from train_handoff.model import build_model, padded_vocab  # noqa: E402
from train_handoff.phases import load_phases  # noqa: E402
from train_handoff.trainer import METRICS, make_optimizer, sequence_loss, train  # noqa: E402

DEMO = os.path.join(ROOT, "tests", "data", "demo", "onestopenglish.jsonl.zst")


def build_demo_mix(output: str) -> None:
    """Two phases of the demo articles as Megatron shards with manifests, as the mix stage lays them out."""
    raw = zstandard.ZstdDecompressor().stream_reader(open(DEMO, "rb"))
    texts = [json.loads(line)["text"] for line in io.TextIOWrapper(raw, encoding="utf-8")]
    tok = load_tokenizer(PHI3_OFFLINE)
    docs = encode_with_eos(tok, texts)
    for phase, part in (("phase1", docs[::2]), ("phase2", docs[1::2])):
        d = os.path.join(output, "mix", phase)
        os.makedirs(d)
        with IndexedDatasetWriter(os.path.join(d, "shard_00000")) as w:
            for ids in part:
                w.add_document(ids)
        manifest = {
            "phase": phase,
            "tokenizer": PHI3_OFFLINE,
            "vocab_size": len(tok),
            "tokens": w.tokens,
            "sources": {
                "web/onestopenglish": {"tokens": w.tokens, "docs": w.docs, "weight": 1.0, "epochs": 1.0}
            },
            "shards": ["shard_00000"],
            "blend": "1.0 shard_00000",
        }
        with open(os.path.join(d, "manifest.json"), "w") as f:
            json.dump(manifest, f)


def trainer_rates(cfg: TrainConfig, output: str, vocab: int, skip: int) -> list[float]:
    phases, _ = load_phases(cfg, os.path.join(output, "mix"))
    state = tempfile.mkdtemp(prefix="train-bench-")
    train(cfg, phases, state, vocab, log=lambda _: None)
    rows = [json.loads(line) for line in open(os.path.join(state, METRICS))]
    return [r["tokens_per_s"] for r in rows if "loss" in r][skip:]


def bare_rates(cfg: TrainConfig, batch: torch.Tensor, vocab: int, steps: int, skip: int) -> list[float]:
    rt = parallel.start(cfg.device, cfg.precision)
    model = build_model(cfg, vocab).to(rt.device)
    opt = make_optimizer(model, cfg, rt.device)
    batch = batch.to(rt.device)
    rates = []
    for _ in range(steps):
        t = time.perf_counter()
        sequence_loss(model, batch, rt).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(batch[:, :-1].numel() / (time.perf_counter() - t))
    return rates[skip:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--mix",
        help="an OUTPUT directory whose mix/phase1 and mix/phase2 to read (default: build from the demo "
        "corpus)",
    )
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per round and side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--skip", type=int, default=2, help="first steps of each round left out (warm-up)")
    args = ap.parse_args()

    output = args.mix or tempfile.mkdtemp(prefix="train-bench-mix-")
    if not args.mix:
        build_demo_mix(output)
    probe = TrainConfig(seq_len=args.seq_len, micro_batch=args.micro_batch, heldout_sequences=0)
    phases, manifest = load_phases(probe, os.path.join(output, "mix"))
    vocab = padded_vocab(manifest["vocab_size"])
    seqs = sum(len(p.order) for p in phases)
    budget = (
        args.steps * args.micro_batch + 1
    ) * args.seq_len  # tokens of one phase-1-only run of `steps` steps
    cfg = TrainConfig(
        seq_len=args.seq_len,
        micro_batch=args.micro_batch,
        heldout_sequences=0,
        phases=["phase1"],
        max_phase_tokens=budget,
        log_every=1,
        eval_every=10**9,
        checkpoint_every=10**9,
        save_model=False,
    )
    batch = torch.from_numpy(phases[0].sequences(phases[0].order[: args.micro_batch])).long()
    print(
        f"data: demo mix in {output}: {len(phases)} phases, {seqs} sequences of {args.seq_len + 1} tokens; "
        f"phase 1 used; model tiny Phi-3, vocab {vocab}, "
        f"{cfg.precision}, micro-batch {args.micro_batch}, {torch.get_num_threads()} threads"
    )

    ours, bare = [], []
    for r in range(args.rounds):
        sides = [
            lambda: ours.extend(trainer_rates(cfg, output, vocab, args.skip)),
            lambda: bare.extend(bare_rates(cfg, batch, vocab, args.steps, args.skip)),
        ]
        for side in sides if r % 2 == 0 else sides[::-1]:  # alternate which side goes first
            side()
        print(
            f"round {r + 1}: trainer {statistics.median(ours):.0f} tokens/s, bare loop "
            f"{statistics.median(bare):.0f} tokens/s (medians so far)"
        )
    print(
        f"trainer: median {statistics.median(ours):.0f} tokens/s, fastest step {max(ours):.0f} tokens/s "
        f"({len(ours)} steps)"
    )
    print(
        f"bare forward/backward/AdamW loop: median {statistics.median(bare):.0f} tokens/s, "
        f"fastest step {max(bare):.0f} tokens/s ({len(bare)} steps)"
    )
    print(f"fastest-step ratio: {max(ours) / max(bare):.3f}")
    print(f"ratio: {statistics.median(ours) / statistics.median(bare):.3f}")


if __name__ == "__main__":
    main()
