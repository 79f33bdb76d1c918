"""The tiny Phi-3 builds deterministically with Phi-3's tokenizer and loads in transformers."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from synth.tiny_model import ensure_tiny_phi3


def test_tiny_phi3_builds_once_and_loads(tmp_path):
    path = ensure_tiny_phi3(str(tmp_path / "tiny"))
    weights = tmp_path / "tiny" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert ensure_tiny_phi3(path) == path and weights.stat().st_mtime_ns == mtime  # not rebuilt

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    cfg = model.config
    assert cfg.hidden_size // cfg.num_attention_heads >= 64 and cfg.num_hidden_layers == 2
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|user|>"]) == [32000, 32010]
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<s><|user|>\nhi<|end|>\n<|assistant|>\n"
    logits = model(**tok("Photosynthesis turns light into sugar.", return_tensors="pt")).logits
    assert logits.shape[-1] == 32064 and torch.isfinite(logits).all()

    # same seed, same weights: a second build elsewhere is identical
    other = ensure_tiny_phi3(str(tmp_path / "again"))
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == weights.read_bytes()
    assert other.endswith("again")
