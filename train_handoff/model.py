"""The Phi-3 model: transformers' `Phi3ForCausalLM` at a preset size, with embedding rows fitted to the
tokenizer, and saved as a Hugging Face model directory that transformers and vLLM load as it is."""

from __future__ import annotations

import torch
from transformers import Phi3Config, Phi3ForCausalLM

from train_handoff.config import PRESETS, TrainConfig
from train_handoff.errors import TrainError

# Phi-3's generation_config.json stops on these (32000, 32001, 32007), so a chat reply ends at <|end|>
STOP_TOKENS = ("<|endoftext|>", "<|assistant|>", "<|end|>")
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


def load_tokenizer(name: str):
    """The tokenizer a manifest names (local directory or Hub id), to save beside every model.

    `PreTrainedTokenizerFast` rather than `AutoTokenizer`, as pipeline/tokenizer.py does (for Phi-3 the latter
    picks a slow-path tokenizer that encodes a leading space differently); its saved tokenizer_config.json
    names that class, so `AutoTokenizer` loads the saved copy the same way. Loaded here, not through
    pipeline.tokenizer: the trainer depends on nothing of the pipeline but its shard format.
    """
    from transformers import PreTrainedTokenizerFast

    try:
        return PreTrainedTokenizerFast.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise TrainError(
            f"tokenizer '{name}' (named by the manifest): cannot load it to save beside the model: {e}"
        ) from None


def save_hf(path: str, model, weights: dict, tokenizer=None) -> None:
    """A complete Hugging Face model directory: config.json, model.safetensors, generation_config.json and,
    with a tokenizer, its files (tokenizer.json, tokenizer_config.json with the chat template, special tokens)
    so that `AutoTokenizer`, `AutoModelForCausalLM` and `vllm.LLM` load `path` with no other step."""
    if tokenizer is not None:
        vocab = tokenizer.get_vocab()
        stop = [vocab[t] for t in STOP_TOKENS if t in vocab]
        gen = model.generation_config
        gen.bos_token_id = tokenizer.bos_token_id
        gen.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        gen.eos_token_id = stop if len(stop) > 1 else tokenizer.eos_token_id
    model.save_pretrained(path, state_dict=weights)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
