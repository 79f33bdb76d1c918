"""The `train:` config section: model preset, precision, schedule, batch, checkpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    """Unknown keys are errors and values are frozen, as in every phicurate section; defined here because
    the trainer depends on nothing of the pipeline but its shard format."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# Model presets: the Phi-3 architecture at two sizes. Vocabulary rows come from the manifest (see model.py).
PRESETS: dict[str, dict] = {
    # CPU tests and the demo: 2 layers, head_dim 64 (what vLLM's CPU attention needs too).
    "tiny": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=256,
    ),
    # Phi-3-mini (3.8B): the published microsoft/Phi-3-mini-4k-instruct shape.
    "phi3-mini": dict(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=32,
        num_attention_heads=32,
        max_position_embeddings=4096,
    ),
}


class TrainConfig(_Strict):
    """Trains Phi-3 on OUTPUT/mix/phase1 then phase2; writes OUTPUT/train/ (metrics, loss curve, final
    model)."""

    model: Literal["tiny", "phi3-mini"] = "tiny"  # architecture preset (sizes in train_handoff/config.py)
    # embedding rows; null: the manifest's vocab_size rounded up to 64
    vocab_size: int | None = Field(None, ge=1)
    seq_len: int | None = Field(None, ge=8)  # tokens per training sequence; null: the preset's context length
    phases: list[str] = Field(["phase1", "phase2"], min_length=1)  # mix phases, trained in this order
    # directory of the phase directories (local/shared filesystem); null: OUTPUT/mix
    mix_dir: str | None = None
    # train at most this many tokens of each phase; null: its whole budget
    max_phase_tokens: int | None = Field(None, ge=1)
    micro_batch: int = Field(4, ge=1)  # sequences per device per forward/backward
    grad_accum: int = Field(1, ge=1)  # micro-batches per optimizer step
    # bf16: bf16 matmuls/activations, fp32 master weights and AdamW state
    precision: Literal["bf16", "fp32"] = "bf16"
    lr: float = Field(3e-4, gt=0)  # peak learning rate
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # final learning rate as a share of the peak
    # wsd: warmup, stable through phase 1, linear decay over the last phase
    schedule: Literal["wsd", "cosine"] = "wsd"
    warmup_steps: int = Field(10, ge=0)  # linear warmup from 0 to the peak
    weight_decay: float = Field(0.1, ge=0)  # AdamW decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    grad_clip: float = Field(1.0, gt=0)  # max global gradient norm
    seed: int = 0  # model init and the order of sequences within each phase
    # per source and phase: sequences kept out of training for held-out loss
    heldout_sequences: int = Field(4, ge=0)
    eval_every: int = Field(20, ge=1)  # optimizer steps between held-out evaluations (also at each phase end)
    log_every: int = Field(1, ge=1)  # optimizer steps between metrics lines
    checkpoint_every: int = Field(50, ge=1)  # optimizer steps between checkpoints (also at each phase end)
    # checkpoints and live metrics (local or shared filesystem); null: OUTPUT/.train-state
    state_dir: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available
    activation_checkpointing: bool = False  # recompute each layer in backward: less memory, ~30% more compute
    save_model: bool = True  # write the final model in Hugging Face format to OUTPUT/train/model/

    @model_validator(mode="after")
    def _checks(self) -> "TrainConfig":
        if len(set(self.phases)) != len(self.phases):
            raise ValueError(f"phases lists a phase twice: {self.phases}")
        ctx = PRESETS[self.model]["max_position_embeddings"]
        if self.seq_len is not None and self.seq_len > ctx:
            raise ValueError(
                f"seq_len {self.seq_len} exceeds the context length {ctx} of model '{self.model}'"
            )
        if self.vocab_size is not None and self.vocab_size % 64:
            raise ValueError(
                f"vocab_size {self.vocab_size} is not a multiple of 64 (Phi-3 pads 32011 to 32064)"
            )
        return self

    @property
    def context(self) -> int:
        return self.seq_len or PRESETS[self.model]["max_position_embeddings"]
