"""One process or many: device choice, torchrun's process group, FSDP2 sharding with bf16 compute.

Under `torchrun` (WORLD_SIZE > 1) the model is sharded with FSDP2 (`fully_shard` per decoder layer, then the
root), parameters kept in fp32 and gathered in bf16 for compute, gradients reduced in fp32. A single process
trains the plain module under `torch.autocast` instead: the same numerics (fp32 master weights, bf16 matmuls).
The multi-GPU path is written for CUDA with NCCL and is not run in this repository's CPU-only tests.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    rank: int
    world: int
    device: torch.device
    bf16: bool

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world > 1

    def autocast(self):
        """bf16 compute for the unsharded model; FSDP's mixed-precision policy casts the sharded one
        itself."""
        if not self.bf16 or self.sharded:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def barrier(self) -> None:
        if self.sharded:
            dist.barrier()

    def mean(self, value: float) -> float:
        """Mean of a scalar over ranks (for logging)."""
        if not self.sharded:
            return value
        t = torch.tensor([value], device=self.device, dtype=torch.float64)
        dist.all_reduce(t)
        return t.item() / self.world


def start(device: str, precision: str) -> Runtime:
    """Join torchrun's process group when launched by it; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(rank=rank, world=world, device=dev, bf16=precision == "bf16")


def stop(rt: Runtime) -> None:
    if rt.sharded and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    """Move to the device; under torchrun, shard each decoder layer and the root with FSDP2."""
    model.to(rt.device)
    if not rt.sharded:
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if rt.bf16 else torch.float32, reduce_dtype=torch.float32
    )
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def grad_sync(model: torch.nn.Module, rt: Runtime, on: bool) -> None:
    """With gradient accumulation, reduce gradients only on the last micro-batch of a step."""
    if rt.sharded:
        model.set_requires_gradient_sync(on)
