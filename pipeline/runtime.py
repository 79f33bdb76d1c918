"""Starting or joining Ray: in-process by default, a cluster when the config or RAY_ADDRESS says so."""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys

import ray

import pipeline
from pipeline.config import RayConfig
from pipeline.workersetup import setup

logger = logging.getLogger(__name__)
# the directory that holds the project's packages (pipeline, synth, classifiers, train_handoff)
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(pipeline.__file__)))
_reaper: subprocess.Popen | None = None


def _driver_dirs() -> frozenset[str]:
    """What Ray would put in front of the workers' sys.path: the driver's cwd and script directory."""
    dirs = {os.path.abspath(os.path.curdir), os.path.dirname(os.path.realpath(sys.argv[0] or "."))}
    return frozenset(d for d in dirs if d != PROJECT_ROOT)


def _start_reaper() -> None:
    """A watcher that stops this in-process Ray's leftovers if the driver dies without shutting it down."""
    global _reaper
    try:
        _reaper = subprocess.Popen(
            [sys.executable, "-I", "-m", "pipeline.reaper", str(os.getpid())],
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as e:
        logger.warning("no watcher for the in-process Ray (%s): a killed run may leave Ray processes", e)


def init_ray(cfg: RayConfig, secret_envs: tuple[str, ...] = ()) -> None:
    """Connect once per process. Under `ray job submit`, RAY_ADDRESS is set and this joins that cluster.

    Workers never import from the directory the driver runs in, scrub the values of `secret_envs` (names
    of environment variables) from what they print and log, and, on an in-process Ray, keep to
    `cfg.worker_memory_mb` (pipeline/workersetup.py). Under `ray job submit` the job's own runtime_env
    (working_dir) already keeps that directory off their path, and the hook is not installed."""
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:
        memory = cfg.worker_memory_mb * 2**20 if cfg.worker_memory_mb and not address else None
        hook = functools.partial(setup, _driver_dirs(), memory, tuple(secret_envs))
        kwargs["runtime_env"] = {"worker_process_setup_hook": functools.update_wrapper(hook, setup)}
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
        _start_reaper()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.progress_bars
    # Same input, same output order, on one machine or many: outputs are compared and hashed downstream.
    ctx.execution_options.preserve_order = True
