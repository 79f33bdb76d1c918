"""The training loop: AdamW with warmup-stable-decay (or cosine), gradient accumulation and clipping, held-out
loss
per source, checkpoints every N steps and an exact resume.

The position in the data is a function of the step (each phase's sequence order is fixed by the seed and the
global batch is constant), and a checkpoint stores it next to the model and optimizer, so a resumed run reads
the same sequences in the same order and its losses equal the uninterrupted run's step for step.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from train_handoff import parallel
from train_handoff.config import TrainConfig
from train_handoff.errors import TrainError
from train_handoff.model import build_model, load_tokenizer, save_hf
from train_handoff.phases import Phase

METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
STATE_MARKER = ".phicurate-train-state"  # in a state directory the trainer made; only such a one is cleared
# step, phase, phase step, tokens: written last, so its presence marks a complete checkpoint
POSITION = "position.json"
KEEP_CHECKPOINTS = 2  # older ones are deleted once a newer one is complete


@dataclass
class TrainResult:
    finished: bool  # False when stopped early by `stop_after` (continue with resume=True)
    step: int
    total_steps: int
    tokens: int  # training tokens consumed so far
    final_loss: float | None
    heldout: dict[str, float]  # last held-out loss per "phase/source"
    tokens_per_s: float  # mean over the steps of this invocation
    params: int


def lr_factor(step: int, cfg: TrainConfig, phase_steps: list[int]) -> float:
    """Learning rate of optimizer step `step` (0-based) as a share of the peak.

    wsd: linear warmup, then the peak until the last phase starts, then linear decay to min_lr_ratio over the
    last phase, so the model anneals on the highest-quality mix. cosine: warmup, then cosine over all steps.
    """
    total = sum(phase_steps)
    warm = min(cfg.warmup_steps, total)
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "wsd":
        decay_start = max(total - phase_steps[-1], warm)
        if step < decay_start:
            return 1.0
        progress = (step - decay_start + 1) / max(total - decay_start, 1)
        return 1.0 - (1.0 - cfg.min_lr_ratio) * progress
    progress = (step - warm + 1) / max(total - warm, 1)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 6 x parameters (matmuls, forward and backward) + attention scores (PaLM's
    formula)."""
    c = model.config
    n = sum(p.numel() for p in model.parameters())
    return 6 * n + 12 * c.num_hidden_layers * c.hidden_size * seq_len


class Metrics:
    """Appends one JSON line per event to STATE/metrics.jsonl (main rank only)."""

    def __init__(self, path: str, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        """On resume, forget lines of steps the checkpoint does not include: they will be trained again."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            keep = [line for line in f if json.loads(line)["step"] <= step]
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(keep)

    def write(self, **row) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


def sequence_loss(model, tokens: torch.Tensor, rt: parallel.Runtime) -> torch.Tensor:
    """Mean next-token loss of a batch of sequences of seq_len + 1 tokens; logits upcast to fp32 for the
    softmax."""
    with rt.autocast():
        logits = model(input_ids=tokens[:, :-1]).logits
    return F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())


def check_ids(batch: torch.Tensor, vocab_size: int, where: Callable[[int], str]) -> None:
    """A token id beyond the embedding would crash inside the model without saying where it came from."""
    top = batch.max(dim=1).values
    if int(top.max()) >= vocab_size:
        row = int(top.argmax())
        raise TrainError(
            f"{where(row)} holds token id {int(top[row])}, beyond the model's {vocab_size} embedding rows; "
            f"the shards do not match the manifest's vocab_size"
        )


@torch.no_grad()
def evaluate(model, phases: list[Phase], cfg: TrainConfig, rt: parallel.Runtime) -> dict[str, float]:
    """Held-out loss per phase and source (sequences of each source that training never reads)."""
    model.eval()
    out = {}
    for phase in phases:
        for source, seqs in phase.heldout.items():
            losses = []
            for i in range(0, len(seqs), cfg.micro_batch):
                batch = torch.from_numpy(seqs[i : i + cfg.micro_batch]).long()
                check_ids(
                    batch,
                    model.config.vocab_size,
                    lambda r, i=i, source=source, name=phase.name: (
                        f"{name}: held-out sequence {i + r} of '{source}'"
                    ),
                )
                batch = batch.to(rt.device)
                losses.append(sequence_loss(model, batch, rt).item() * len(batch))
            out[f"{phase.name}/{source}"] = round(sum(losses) / len(seqs), 5)
    model.train()
    return out


def _checkpoint_dirs(state_dir: str) -> list[tuple[int, str]]:
    root = os.path.join(state_dir, CHECKPOINTS)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if name.startswith("step-") and os.path.exists(os.path.join(path, POSITION)):
            found.append((int(name.removeprefix("step-")), path))
    return sorted(found)


def save_checkpoint(
    state_dir: str, model, optimizer, position: dict, rt: parallel.Runtime, tokenizer=None
) -> str:
    """Sharded model + optimizer state (torch.distributed.checkpoint, one file per rank) to resume from, the
    same weights as a Hugging Face model directory (with the tokenizer) to load anywhere, and the data
    position, last."""
    path = os.path.join(state_dir, CHECKPOINTS, f"step-{position['step']:07d}")
    msd, osd = get_state_dict(model, optimizer)
    with warnings.catch_warnings():  # a single process saves without a process group, as intended
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=path)
    weights = full_state_dict(model)  # a collective under FSDP: every rank joins
    if rt.main:
        save_hf(path, model, weights, tokenizer)
    rt.barrier()
    if rt.main:
        tmp = os.path.join(path, POSITION + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(position, f, indent=2)
        os.replace(tmp, os.path.join(path, POSITION))
        for _, old in _checkpoint_dirs(state_dir)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    rt.barrier()
    return path


def load_checkpoint(path: str, model, optimizer) -> dict:
    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optim": osd}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    with open(os.path.join(path, POSITION), encoding="utf-8") as f:
        return json.load(f)


def make_optimizer(model, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only, not on norm gains (the usual GPT/Phi recipe); the fused
    kernel
    on CUDA, the multi-tensor one on CPU (torch's CPU default is a per-tensor loop, ~2x slower here)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    other = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay}, {"params": other, "weight_decay": 0.0}]
    impl = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **impl)


def train(
    cfg: TrainConfig,
    phases: list[Phase],
    state_dir: str,
    vocab_size: int,
    resume: bool = False,
    stop_after: int | None = None,
    eos_token_id: int | None = None,
    log: Callable[[str], None] = print,
    tokenizer: str | None = None,
    owner: str = "",
) -> tuple[TrainResult, torch.nn.Module]:
    """Train phase after phase for their budgets; checkpoint into `state_dir`; return the result and the
    model.

    resume: continue from the newest complete checkpoint in `state_dir` (an error if there is none); otherwise
    `state_dir` is cleared first. stop_after: stop (with a checkpoint) after this many optimizer steps of this
    invocation, e.g. to fit a job's time limit. tokenizer: the manifest's, saved into every checkpoint so
    that each one is a complete Hugging Face model directory (STATE/checkpoints/step-N/).
    """
    tok = load_tokenizer(tokenizer) if tokenizer else None
    rt = parallel.start(cfg.device, cfg.precision)
    if not rt.main:
        log = lambda _: None  # noqa: E731 - one rank speaks
    model = parallel.wrap(build_model(cfg, vocab_size, eos_token_id), rt)
    optimizer = make_optimizer(model, cfg, rt.device)
    micro_per_rank = cfg.micro_batch * cfg.grad_accum
    global_batch = micro_per_rank * rt.world
    phase_steps = [p.steps(global_batch) for p in phases]
    total = sum(phase_steps)
    if total == 0:
        raise TrainError(
            f"train: the phases hold {[len(p.order) for p in phases]} training sequences of "
            f"{cfg.context + 1} tokens, "
            f"fewer than one optimizer step of {global_batch} sequences (micro_batch x grad_accum x ranks); "
            f"lower train.micro_batch or train.seq_len, or raise the mix budgets"
        )
    # what fixes the sequence read at each step: a checkpoint resumes only where this is unchanged
    data_key = {
        "phases": {p.name: p.fingerprint for p in phases},
        "orders": {p.name: hashlib.sha256(p.order.tobytes()).hexdigest()[:16] for p in phases},
        "global_batch": global_batch,
        "seq_len": cfg.context,
        "seed": cfg.seed,
    }
    metrics = Metrics(os.path.join(state_dir, METRICS), rt.main)
    step = 0
    if resume:
        found = _checkpoint_dirs(state_dir)
        if not found:
            raise TrainError(f"--resume: no complete checkpoint under {os.path.join(state_dir, CHECKPOINTS)}")
        position = load_checkpoint(found[-1][1], model, optimizer)
        if position["data"] != data_key:
            raise TrainError(
                f"--resume: {found[-1][1]} was written for other data or batch settings "
                f"({position['data']}) than this config gives ({data_key}); resume with the same mix and "
                "train "
                f"settings, or start over without --resume"
            )
        step = position["step"]
        torch.set_rng_state(torch.tensor(position["rng"], dtype=torch.uint8))
        metrics.truncate_after(step)
        log(f"[train] resumed from {found[-1][1]} at step {step} of {total}")
    elif rt.main and os.path.isdir(state_dir) and os.listdir(state_dir):
        # cleared only if this trainer made it (it holds STATE_MARKER): never somebody else's directory
        marker = os.path.join(state_dir, STATE_MARKER)
        if not os.path.isfile(marker):
            raise TrainError(
                f"{state_dir} exists and was not created by phicurate's trainer (no {STATE_MARKER}); it is "
                "not deleted: give train.state_dir a new or empty directory, or continue it with --resume"
            )
        with open(marker, encoding="utf-8") as f:
            made_for = f.read().strip()
        if made_for and made_for != owner:  # another run's checkpoints: a shared state_dir must not lose them
            raise TrainError(
                f"{state_dir} holds the training state of another run ({made_for}), not of {owner}; it is "
                "not deleted: give this run its own train.state_dir, or continue that run with --resume"
            )
        shutil.rmtree(state_dir)
    rt.barrier()
    os.makedirs(state_dir, exist_ok=True)
    if rt.main:  # names the run it belongs to: a fresh start clears it only for that run
        with open(os.path.join(state_dir, STATE_MARKER), "w", encoding="utf-8") as f:
            f.write(owner)

    params = sum(p.numel() for p in model.parameters())
    fpt = flops_per_token(model, cfg.context)
    starts = np.cumsum([0, *phase_steps])
    tokens_per_step = global_batch * cfg.context
    log(
        f"[train] {cfg.model}: {params / 1e6:.1f}M parameters, vocab {vocab_size}, seq_len {cfg.context}, "
        f"{rt.world} rank(s) on {rt.device.type}, {cfg.precision}; steps per phase "
        + ", ".join(f"{p.name} {n}" for p, n in zip(phases, phase_steps))
        + f"; {tokens_per_step} tokens per step"
    )

    def position_of(s: int) -> tuple[int, int]:
        p = int(np.searchsorted(starts, s, side="right") - 1)
        return p, s - int(starts[p])

    def checkpoint() -> None:
        p, ps = position_of(step) if step < total else (len(phases) - 1, phase_steps[-1])
        pos = {
            "step": step,
            "phase": phases[p].name,
            "phase_step": ps,
            "tokens": step * tokens_per_step,
            "data": data_key,
            "rng": torch.get_rng_state().tolist(),
        }
        path = save_checkpoint(state_dir, model, optimizer, pos, rt, tok)
        log(f"[train] checkpoint (Hugging Face model directory): {path}")

    heldout = {}
    if step == 0 and cfg.heldout_sequences:  # the starting point of the held-out curves
        heldout = evaluate(model, phases, cfg, rt)
        metrics.write(step=0, phase=phases[0].name, tokens=0, heldout=heldout)
    model.train()
    first, t_start, last_loss = step, time.perf_counter(), None
    t_log, tokens_log = time.perf_counter(), 0
    while step < total:
        p, ps = position_of(step)
        phase = phases[p]
        for g in optimizer.param_groups:
            g["lr"] = cfg.lr * lr_factor(step, cfg, phase_steps)
        rows = phase.order[ps * global_batch + rt.rank * micro_per_rank :][:micro_per_rank]
        loss_sum = 0.0
        for m in range(cfg.grad_accum):
            ids = rows[m * cfg.micro_batch : (m + 1) * cfg.micro_batch]
            batch = torch.from_numpy(phase.sequences(ids))
            check_ids(
                batch, vocab_size, lambda row, ids=ids, name=phase.name: f"{name}: sequence {int(ids[row])}"
            )
            parallel.grad_sync(model, rt, on=m == cfg.grad_accum - 1)
            loss = sequence_loss(model, batch.long().to(rt.device, non_blocking=True), rt)
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_log += tokens_per_step
        phase_end = step == int(starts[p + 1])
        if step % cfg.log_every == 0 or phase_end:
            last_loss = rt.mean(float(loss_sum) / cfg.grad_accum)
            dt = time.perf_counter() - t_log
            tps = tokens_log / dt
            metrics.write(
                step=step,
                phase=phase.name,
                tokens=step * tokens_per_step,
                loss=round(last_loss, 5),
                lr=optimizer.param_groups[0]["lr"],
                grad_norm=round(float(getattr(grad_norm, "full_tensor", lambda g=grad_norm: g)()), 4),
                tokens_per_s=round(tps, 1),
                tflops=round(tps * fpt / 1e12, 3),
            )
            t_log, tokens_log = time.perf_counter(), 0
        if cfg.heldout_sequences and (step % cfg.eval_every == 0 or phase_end):
            heldout = evaluate(model, phases, cfg, rt)
            metrics.write(step=step, phase=phase.name, tokens=step * tokens_per_step, heldout=heldout)
            log(f"[train] step {step}/{total} {phase.name} loss {last_loss:.4f} held-out {heldout}")
            t_log = time.perf_counter()  # tokens/s counts training steps, not evaluation
        stopping = stop_after is not None and step - first >= stop_after and step < total
        if step % cfg.checkpoint_every == 0 or phase_end or stopping:
            checkpoint()
            t_log = time.perf_counter()
        if stopping:
            log(
                f"[train] stopped after {step - first} steps at step {step} of {total}; continue with "
                "--resume"
            )
            break
    elapsed = time.perf_counter() - t_start
    result = TrainResult(
        finished=step >= total,
        step=step,
        total_steps=total,
        tokens=step * tokens_per_step,
        final_loss=last_loss,
        heldout=heldout,
        tokens_per_s=round((step - first) * tokens_per_step / elapsed, 1) if step > first else 0.0,
        params=params,
    )
    return result, model


def full_state_dict(model) -> dict:
    """The whole model's weights on the CPU (gathered from the shards under FSDP) for save_pretrained."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
