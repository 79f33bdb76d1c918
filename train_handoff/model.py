"""The Phi-3 model: transformers' `Phi3ForCausalLM` at a preset size, with embedding rows fitted to the
tokenizer."""

from __future__ import annotations

import torch
from transformers import Phi3Config, Phi3ForCausalLM

from train_handoff.config import PRESETS, TrainConfig
from train_handoff.errors import TrainError

VOCAB_MULTIPLE = 64  # Phi-3 pads its 32,011 tokens to 32,064 rows: matmuls on multiples of 64 run faster


def padded_vocab(vocab_size: int) -> int:
    return -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def model_vocab(cfg: TrainConfig, manifest_vocab: int, where: str) -> int:
    """Embedding rows: the configured size, which must hold every token id of the manifest, or the padded
    manifest size."""
    if cfg.vocab_size is None:
        return padded_vocab(manifest_vocab)
    if cfg.vocab_size < manifest_vocab:
        raise TrainError(
            f"{where}: the tokenizer has {manifest_vocab} tokens but train.vocab_size is {cfg.vocab_size}: "
            f"token ids up to {manifest_vocab - 1} would index past the embedding. Set train.vocab_size to "
            "at least "
            f"{padded_vocab(manifest_vocab)} or leave it null to size the model from the manifest"
        )
    return cfg.vocab_size


def phi3_config(cfg: TrainConfig, vocab_size: int, eos_token_id: int | None = None) -> Phi3Config:
    shape = PRESETS[cfg.model]
    return Phi3Config(
        vocab_size=vocab_size,
        num_key_value_heads=shape["num_attention_heads"],
        pad_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=1,
        tie_word_embeddings=False,  # Phi-3-mini keeps a separate output matrix
        use_cache=False,
        attention_dropout=0.0,
        **shape,
    )


def build_model(cfg: TrainConfig, vocab_size: int, eos_token_id: int | None = None) -> Phi3ForCausalLM:
    """A freshly initialised model in fp32 (the master weights; bf16 runs under autocast), seeded by
    cfg.seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = Phi3ForCausalLM(phi3_config(cfg, vocab_size, eos_token_id))
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model
