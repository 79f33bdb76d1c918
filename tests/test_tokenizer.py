"""The bundled Phi-3 tokenizer gives Phi-3's ids (llama.cpp's expected outputs) and loads like a Hub
tokenizer."""

from pathlib import Path

import pytest

from pipeline.errors import UserError
from pipeline.tokenizer import PHI3_OFFLINE, encode_with_eos, load_tokenizer, token_dtype

DATA = Path(__file__).parent / "data" / "tokenizer"


def _llama_cpp_cases():
    inputs = (
        (DATA / "ggml-vocab-phi-3.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    )
    outputs = (DATA / "ggml-vocab-phi-3.gguf.out").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(inputs) == len(outputs) == 46
    return [(text, [int(i) for i in ids.split()]) for text, ids in zip(inputs, outputs)]


def test_matches_llama_cpp_expected_ids_for_phi3():
    tok = load_tokenizer(PHI3_OFFLINE)
    cases = _llama_cpp_cases()
    got = tok(([t for t, _ in cases]), add_special_tokens=False)["input_ids"]
    mismatches = [(text, ids, g) for (text, ids), g in zip(cases, got) if g != ids]
    assert mismatches == []


def test_phi3_special_tokens_and_sizes():
    tok = load_tokenizer(PHI3_OFFLINE)
    expected = {
        "<|endoftext|>": 32000,
        "<|assistant|>": 32001,
        "<|system|>": 32006,
        "<|end|>": 32007,
        "<|user|>": 32010,
    }
    assert {t: tok.convert_tokens_to_ids(t) for t in expected} == expected
    assert tok.eos_token_id == 32000 and tok.pad_token_id == 32000 and tok.bos_token_id == 1
    assert len(tok) == 32011  # ids 32011..32063 are embedding padding rows in Phi-3, not tokens
    assert token_dtype(len(tok)).__name__ == "uint16"
    assert tok("<|user|>\nHi<|end|>", add_special_tokens=False)["input_ids"][0] == 32010


def test_auto_tokenizer_loads_the_bundle_with_the_same_ids():
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(PHI3_OFFLINE)
    text, ids = _llama_cpp_cases()[12]  # " Hello world": the leading-space case
    assert auto.encode(text, add_special_tokens=False) == ids == [29871, 15043, 3186]


def test_encode_with_eos_appends_eos_and_reads_special_strings_as_text():
    tok = load_tokenizer(PHI3_OFFLINE)
    docs = ["Hello world", "a web page quoting <|endoftext|> literally", ""]
    ids = encode_with_eos(tok, docs)
    assert ids[0] == [15043, 3186, 32000]
    assert ids[1].count(32000) == 1 and ids[1][-1] == 32000
    assert ids[2] == [32000]
    assert [tok.decode(i[:-1]) for i in ids] == docs


def test_missing_local_tokenizer_is_a_user_error():
    with pytest.raises(UserError, match="no such directory"):
        load_tokenizer("tests/data/tokenizer/no-such-tokenizer")
