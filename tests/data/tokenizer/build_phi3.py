"""Rebuild tests/data/tokenizer/phi3/ (Phi-3-mini's tokenizer) from llama.cpp's `ggml-vocab-phi-3.gguf`.

Why: no model hub is reachable here, and the Phi-3 vocabulary that is available offline is the GGUF
vocabulary file in the llama-cpp-python source package (pieces, scores, token types: 32,064 rows).
transformers converts a GGUF vocabulary to a `tokenizers` BPE model itself (merges from the piece
scores); this script only restores what the conversion loses so that the result matches
`microsoft/Phi-3-mini-4k-instruct`'s tokenizer.json/tokenizer_config.json: `<unk>` as the unknown
token, the added tokens' strip flags, and no `[PAD320xx]` pieces (Phi-3 pads the embedding to 32,064
rows, its tokenizer has 32,011 entries).

    pip download --no-deps --no-binary :all: llama-cpp-python   # then unpack it
    pip install gguf
    python tests/data/tokenizer/build_phi3.py .../vendor/llama.cpp/models/ggml-vocab-phi-3.gguf
"""

import json
import os
import sys
import tempfile

from transformers import AutoTokenizer

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "phi3")
N_REAL = 32011  # <unk>..<|user|>; 32011-32063 are padding rows of the embedding, not tokens
RSTRIP = {"</s>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"} | {f"<|placeholder{i}|>" for i in range(1, 7)}

TOKENIZER_CONFIG = {  # as in microsoft/Phi-3-mini-4k-instruct, but for the class
    "add_bos_token": False,
    "add_eos_token": False,
    "bos_token": "<s>",
    "eos_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
    "unk_token": "<unk>",
    "clean_up_tokenization_spaces": False,
    "legacy": False,
    "model_max_length": 4096,
    "padding_side": "left",
    # Phi-3 says "LlamaTokenizer"; transformers 5 rebuilds that class's normalizer and then encodes a
    # leading space differently from Phi-3 (15 of llama.cpp's 46 cases). The generic fast class runs
    # tokenizer.json as it is, in transformers 4 and 5 alike, and matches every case.
    "tokenizer_class": "PreTrainedTokenizerFast",
}


def main(gguf_path: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path)).save_pretrained(tmp)
        with open(os.path.join(tmp, "tokenizer.json"), encoding="utf-8") as f:
            tj = json.load(f)
        with open(os.path.join(tmp, "chat_template.jinja"), encoding="utf-8") as f:
            chat_template = f.read()
    model = tj["model"]
    model["unk_token"] = "<unk>"
    model["vocab"] = {p: i for p, i in model["vocab"].items() if i < N_REAL}
    model["merges"] = [m for m in model["merges"] if "".join(m if isinstance(m, list) else m.split(" ")) in model["vocab"]]
    added = [a for a in tj["added_tokens"] if a["id"] < N_REAL]
    for a in added:
        a["rstrip"] = a["content"] in RSTRIP
        a["special"] = a["content"] != "</s>"  # Phi-3 marks </s> as not special
    tj["added_tokens"] = added
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, indent=1)
    cfg = {**TOKENIZER_CONFIG, "chat_template": chat_template}
    cfg["added_tokens_decoder"] = {
        str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")} for a in added
    }
    with open(os.path.join(OUT, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=2)
    specials = {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"}
    with open(os.path.join(OUT, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(specials, f, indent=2)
    print(f"wrote {OUT}: {len(model['vocab'])} pieces, {len(model['merges'])} merges, {len(added)} added "
          "tokens")


if __name__ == "__main__":
    main(sys.argv[1])
