"""Stage `train` and the `phicurate train CONFIG [--resume]` command: Phi-3 on the phase mixes, phase 1 then
phase 2.

Checkpoints and the live metrics go to a state directory that outlives a killed run (default
OUTPUT/.train-state),
so `--resume` can continue it. When training finishes, the metrics, the loss curve and the final model
(Hugging Face format) are written into the stage directory OUTPUT/train/, with its `_stage.json`.
The counts of the record are in sequences: `docs_in` packed, `docs_out` trained on, `dropped` held out or
beyond the budget.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
from typing import TYPE_CHECKING

from pipeline import storage
from pipeline.errors import UserError
from pipeline.shards import ShardError, manifest_path
from pipeline.stage import Stage, StageContext, StageOutput
from train_handoff.errors import TrainError

if TYPE_CHECKING:
    from pipeline.config import Config


logger = logging.getLogger(__name__)


class TrainingStopped(Exception):
    """Training stopped early on purpose (`--stop-after`); the checkpoint it left is continued with
    `--resume`."""


def state_dir(config: Config) -> str:
    path = config.train.state_dir or storage.join(config.run.output, ".train-state")
    if "://" in path:
        raise UserError(
            f"train.state_dir: checkpoints need a local or shared filesystem path, got '{path}' "
            f"(run.output is '{config.run.output}'); set train.state_dir to e.g. "
            f"/shared/ckpt/{config.run.name}"
        )
    return path


def mix_dir(config: Config) -> str:
    return config.train.mix_dir or storage.join(config.run.output, "mix")


def model_path(config: Config) -> str:
    """The final model's directory, absolute when local: what from_pretrained, vLLM and synth load."""
    path = storage.join(config.run.output, "train", "model")
    return path if "://" in path else os.path.abspath(path)


def manifests(config: Config) -> list[str]:
    """The manifests of the phases this config trains on: a new mix reruns training."""
    return [manifest_path(mix_dir(config), phase) for phase in config.train.phases]


def run(ctx: StageContext, resume: bool = False, stop_after: int | None = None) -> StageOutput:
    """Train; the trainer's own errors (a config value, a mix that does not fit) are user errors here."""
    try:
        return _train(ctx, resume, stop_after)
    except (TrainError, ShardError) as e:
        raise UserError(str(e)) from None


def _train(ctx: StageContext, resume: bool, stop_after: int | None) -> StageOutput:
    # torch and transformers load here, not when the CLI starts
    from train_handoff.model import load_tokenizer, model_vocab
    from train_handoff.phases import load_phases
    from train_handoff.trainer import full_state_dict, train

    cfg = ctx.section
    phases, manifest = load_phases(cfg, mix_dir(ctx.config))
    vocab = model_vocab(cfg, manifest["vocab_size"], manifest_path(mix_dir(ctx.config), phases[0].name))
    eos = _eos_id(manifest["tokenizer"])
    if eos is not None and eos >= manifest["vocab_size"]:
        raise UserError(
            f"{manifest_path(mix_dir(ctx.config), phases[0].name)}: vocab_size is {manifest['vocab_size']} "
            "but the "
            f"tokenizer's EOS id is {eos}: the manifest does not describe its tokenizer "
            f"'{manifest['tokenizer']}'"
        )
    state = state_dir(ctx.config)
    tokenizer = manifest["tokenizer"] if eos is not None else None  # None: it did not load (said above)
    result, model = train(
        cfg,
        phases,
        state,
        vocab,
        resume=resume,
        stop_after=stop_after,
        eos_token_id=eos,
        tokenizer=tokenizer,
        owner=ctx.config.run.output
        if "://" in ctx.config.run.output
        else os.path.abspath(ctx.config.run.output),
    )
    main = int(os.environ.get("RANK", "0")) == 0
    if not result.finished:
        if main and ctx.work_dir:
            storage.remove_dir(ctx.work_dir)
        raise TrainingStopped(
            f"stopped at step {result.step} of {result.total_steps}; checkpoint in {state}; continue with "
            f"phicurate train CONFIG --resume"
        )
    weights = full_state_dict(model) if cfg.save_model else None  # a collective under FSDP: every rank joins
    if main:
        _finish(ctx, state, model, weights, load_tokenizer(tokenizer) if tokenizer else None)
    trained = result.tokens // cfg.context  # sequences
    held = sum(p.withheld for p in phases)
    packed = sum(p.packed for p in phases)
    return StageOutput(
        docs=None,
        docs_in=packed,
        docs_out=trained,
        dropped={"heldout": held, "beyond_budget": packed - held - trained},
        tokens_out=result.tokens,
        details={**dataclasses.asdict(result), "loss_curve": storage.join(ctx.output, "train", "loss.png")},
    )


def _eos_id(tokenizer: str) -> int | None:
    """The EOS id for the saved model's config (generation stops there); training itself does not need it."""
    from pipeline.tokenizer import load_tokenizer

    try:
        return load_tokenizer(tokenizer).eos_token_id
    except UserError as e:
        logger.warning("[train] the saved model gets no eos_token_id and no tokenizer files: %s", e)
        return None


def _finish(ctx: StageContext, state: str, model, weights: dict | None, tokenizer) -> None:
    """Copy metrics, draw the loss curve and save the model (a Hugging Face model directory with the
    tokenizer) into the stage directory."""
    from train_handoff import curve
    from train_handoff.model import save_hf
    from train_handoff.trainer import METRICS

    local = "://" not in ctx.work_dir
    out = ctx.work_dir if local else state  # figures are drawn locally, then copied to an object store
    metrics = os.path.join(state, METRICS)
    if local:
        shutil.copyfile(metrics, os.path.join(out, METRICS))
    curve.plot_loss(
        metrics, os.path.join(out, "loss.png"), title=f"{ctx.config.run.name}: {ctx.section.model}"
    )
    if weights is not None:
        save_hf(os.path.join(out, "model"), model, weights, tokenizer)
    if not local:
        import pyarrow.fs as pafs

        fs, dst = storage.resolve(ctx.work_dir)
        for name in (METRICS, "loss.png", "model"):
            src = os.path.join(state, name)
            if os.path.exists(src):
                pafs.copy_files(src, f"{dst}/{name}", destination_filesystem=fs)
    logger.info("[train] loss curve: %s", storage.join(ctx.output, "train", "loss.png"))


STAGE = Stage("train", run, outside_files=manifests)


def train_command(config: Config, resume: bool = False, stop_after: int | None = None) -> dict | None:
    """`phicurate train`: run the train stage (its record is written like any stage's) with resume and stop
    options.

    Under torchrun, rank 0 runs the stage and writes its outputs; the other ranks train alongside it.
    """
    from pipeline.runner import input_fingerprint, run_stage

    if config.train is None:
        raise UserError("the config has no 'train' section")
    stage = dataclasses.replace(STAGE, run=functools.partial(run, resume=resume, stop_after=stop_after))
    if int(os.environ.get("RANK", "0")) != 0:
        run(StageContext("train", config, config.run.output, "", None), resume=resume, stop_after=stop_after)
        return None
    record = run_stage(stage, config, input_fingerprint(stage, config, config.run.output))
    return record


def cli_train(
    config_path: str, output: str | None = None, resume: bool = False, stop_after: int | None = None
) -> None:
    """`phicurate train CONFIG` and `torchrun ... -m pipeline train CONFIG`: train, then say where the results
    are."""
    from pipeline.config import load_config

    config = load_config(config_path, output=output)
    if stop_after is not None and stop_after < 1:
        raise UserError(f"--stop-after: give a number of optimizer steps of at least 1, got {stop_after}")
    try:
        record = train_command(config, resume=resume, stop_after=stop_after)
    except TrainingStopped as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"[train] {e}")
        return
    if record is not None:
        d = record["details"]
        print(
            f"[train] done: {d['step']} steps, {record['tokens_out']} tokens, final loss "
            f"{d['final_loss']:.4f}, "
            f"held-out {d['heldout']}, {d['tokens_per_s']:.0f} tokens/s; in "
            f"{storage.join(config.run.output, 'train')}"
        )
        if config.train.save_model:
            print(f"[train] model to load (transformers, vLLM, synth.backend.model): {model_path(config)}")
