"""The Hugging Face tokenizer that turns documents into training tokens (Phi-3's for real runs).

`load_tokenizer` takes a Hub id (`microsoft/Phi-3-mini-4k-instruct`) or a local directory. Offline,
`PHI3_OFFLINE` is Phi-3-mini's own vocabulary bundled with the project (tests/data/tokenizer/, built
from the Phi-3 GGUF vocabulary in llama.cpp and checked against llama.cpp's expected token ids).
"""

from __future__ import annotations

import copy
import os
from functools import lru_cache

import numpy as np

from pipeline.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHI3_OFFLINE = os.path.join(ROOT, "tests", "data", "tokenizer", "phi3")
PHI3_HUB = "microsoft/Phi-3-mini-4k-instruct"


@lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str):
    """A fast tokenizer that runs the repository's tokenizer.json as it is.

    `PreTrainedTokenizerFast` rather than `AutoTokenizer`: for Phi-3 the latter picks transformers 5's
    `LlamaTokenizer`, which rebuilds the normalizer and encodes a leading space unlike Phi-3 itself.
    """
    from transformers import PreTrainedTokenizerFast

    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_like_path and not os.path.isdir(name_or_path):
        raise UserError(
            f"tokenizer '{name_or_path}': no such directory (give a local directory or a Hub id like "
            f"{PHI3_HUB})"
        )
    try:
        tok = PreTrainedTokenizerFast.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        where = (
            "directory"
            if os.path.isdir(name_or_path)
            else "Hugging Face Hub id (is the Hub reachable, or the model cached?)"
        )
        raise UserError(
            f"tokenizer '{name_or_path}': cannot load it as a {where}: {e}. "
            f"Offline, use the bundled Phi-3 tokenizer: {os.path.relpath(PHI3_OFFLINE)}"
        ) from None
    if tok.eos_token_id is None:
        raise UserError(f"tokenizer '{name_or_path}' has no eos_token; documents could not be separated")
    return tok


def token_dtype(vocab_size: int) -> type[np.unsignedinteger] | type[np.signedinteger]:
    """Megatron's choice: uint16 while every id fits (below 65,500), else int32."""
    return np.uint16 if vocab_size < 65500 else np.int32


def encode_with_eos(tok, texts: list[str]) -> list[list[int]]:
    """Token ids of each text (no BOS), followed by the EOS id that separates documents in a packed stream."""
    return encode_plain(plain_text_encoder(tok), tok.eos_token_id, texts)


def encode_plain(backend, eos: int, texts: list[str]) -> list[list[int]]:
    """`encode_with_eos` on a bare `tokenizers.Tokenizer` (what Ray workers get, without importing
    transformers)."""
    return [e.ids + [eos] for e in backend.encode_batch_fast(texts, add_special_tokens=False)]


@lru_cache(maxsize=4)
def plain_text_encoder(tok):
    """The backend tokenizer with special tokens read as plain text: a web page that contains the string
    "<|endoftext|>" must not end a document in the token stream (only the EOS we append does)."""
    backend = copy.deepcopy(tok.backend_tokenizer)
    backend.encode_special_tokens = True
    return backend


@lru_cache(maxsize=4)
def encoder_from_json(spec: str):
    """A `tokenizers.Tokenizer` from its JSON (`plain_text_encoder(tok).to_str()`), built once per process."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(spec)
    backend.encode_special_tokens = True
    return backend
