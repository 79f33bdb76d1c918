"""Starting or joining Ray: in-process by default, a cluster when the config or RAY_ADDRESS says so."""

from __future__ import annotations

import logging
import os

import ray

from pipeline.config import RayConfig


def init_ray(cfg: RayConfig) -> None:
    """Connect once per process. Under `ray job submit`, RAY_ADDRESS is set and this joins that cluster."""
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:  # "local": always a new in-process Ray, never some other Ray that happens to run on this machine
        ray.init(
            address="local",
            num_cpus=cfg.num_cpus,
            object_store_memory=cfg.object_store_memory_mb * 2**20 if cfg.object_store_memory_mb else None,
            include_dashboard=False,
            **kwargs,
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.progress_bars
    # Same input, same output order, on one machine or many: outputs are compared and hashed downstream.
    ctx.execution_options.preserve_order = True
