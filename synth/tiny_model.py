"""A tiny random-weight Phi-3 with Phi-3's real tokenizer, built locally for the demo and the tests.

Why: no model hub is reachable here, yet the generation code must run the real engine (vLLM's
offline engine, `vllm serve`, transformers). A 2-layer `Phi3ForCausalLM` with random weights loads in
all three and exercises every code path; its text is noise, which the synth stage's quality control
reports as such. Built on demand into a cache directory (never committed), deterministically.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

# Small but valid for vLLM's CPU attention: head_dim = hidden_size / num_attention_heads = 64.
SPEC = {
    "vocab_size": 32064,  # Phi-3-mini's embedding rows (32,011 tokens padded to 32,064)
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "bos_token_id": 1,
    "eos_token_id": 32000,  # <|endoftext|>
    "pad_token_id": 32000,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
SEED = 0
MARKER = "tiny_phi3.json"  # the spec a directory was built from; a different spec rebuilds it


def ensure_tiny_phi3(path: str = "out/models/tiny-phi3") -> str:
    """Build the tiny Phi-3 at `path` unless it is already there; return the path.

    The directory is built in a temporary sibling and renamed, so a killed build never looks complete.
    """
    marker = os.path.join(path, MARKER)
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) == {"spec": SPEC, "seed": SEED}:
                return path
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    from pipeline.tokenizer import PHI3_OFFLINE, load_tokenizer

    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tiny-phi3-", dir=parent)
    try:
        torch.manual_seed(SEED)
        model = Phi3ForCausalLM(Phi3Config(**{k: v for k, v in SPEC.items() if k != "torch_dtype"}))
        model.to(torch.bfloat16).save_pretrained(tmp)
        load_tokenizer(PHI3_OFFLINE).save_pretrained(tmp)
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump({"spec": SPEC, "seed": SEED}, f)
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
