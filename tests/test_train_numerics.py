"""The trainer's numerics on the tiny Phi-3: bf16 against fp32, the learning-rate schedule, the vocabulary
check."""

import pytest
import torch

from pipeline.tokenizer import PHI3_OFFLINE, encode_with_eos, load_tokenizer
from train_handoff import parallel
from train_handoff.config import TrainConfig
from train_handoff.errors import TrainError
from train_handoff.model import build_model, model_vocab, padded_vocab
from train_handoff.trainer import lr_factor, sequence_loss

TEXT = (
    "The for statement in Python differs a bit from what you may be used to in C or Pascal. Rather than "
    "always "
    "iterating over an arithmetic progression of numbers, Python's for statement iterates over the items of "
    "any "
    "sequence, a list or a string, in the order that they appear in the sequence. "
)


def _batch(seq_len: int, n: int) -> torch.Tensor:
    ids = encode_with_eos(load_tokenizer(PHI3_OFFLINE), [TEXT * 8])[0]
    return torch.tensor([ids[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)])


def _one_step(precision: str, batch: torch.Tensor) -> tuple[float, torch.Tensor, float]:
    cfg = TrainConfig(precision=precision, seq_len=batch.shape[1] - 1)
    rt = parallel.start("cpu", precision)
    model = build_model(cfg, 32064)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = sequence_loss(model, batch, rt)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()]).double()
    opt.step()
    with torch.no_grad():
        after = sequence_loss(model, batch, rt).item()
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights in both modes
    return loss.item(), grads, after


def test_bf16_step_matches_fp32_step():
    """Same init, same batch of real Phi-3 tokens: bf16 autocast agrees with fp32 within the stated tolerance.

    Tolerance: loss within 0.02 nats (bf16 keeps ~3 significant digits; measured ~1e-4), gradient relative
    error below 3% (measured ~0.6%), loss after one AdamW step within 0.02 nats.
    """
    batch = _batch(64, 4)
    loss32, g32, after32 = _one_step("fp32", batch)
    loss16, g16, after16 = _one_step("bf16", batch)
    assert loss32 > 9.0  # an untrained model over a 32,064-row vocabulary: about ln(32064) = 10.4
    assert abs(loss16 - loss32) < 0.02
    assert ((g16 - g32).norm() / g32.norm()).item() < 0.03
    assert after32 < loss32 and after16 < loss16  # the step helped in both
    assert abs(after16 - after32) < 0.02


def test_bf16_runs_matmuls_in_bf16():
    cfg = TrainConfig(precision="bf16", seq_len=16)
    rt = parallel.start("cpu", "bf16")
    model = build_model(cfg, 32064)
    with rt.autocast():
        logits = model(input_ids=_batch(16, 1)[:, :-1]).logits
    assert logits.dtype == torch.bfloat16


def test_wsd_schedule_warms_up_holds_then_decays_over_the_last_phase():
    cfg = TrainConfig(lr=1e-3, warmup_steps=4, min_lr_ratio=0.1, schedule="wsd")
    f = [lr_factor(s, cfg, [10, 6]) for s in range(16)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4:10] == [1.0] * 6  # stable through phase 1
    assert all(a > b for a, b in zip(f[10:], f[11:]))  # decaying through phase 2
    assert f[-1] == pytest.approx(0.1)


def test_cosine_schedule_ends_at_min_lr():
    cfg = TrainConfig(warmup_steps=2, min_lr_ratio=0.0, schedule="cosine")
    f = [lr_factor(s, cfg, [5, 5]) for s in range(10)]
    assert f[1] == 1.0 and f[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(f[1:], f[2:]))


def test_embedding_rows_padded_like_phi3():
    assert padded_vocab(32011) == 32064  # Phi-3-mini: 32,011 tokens, 32,064 embedding rows
    assert model_vocab(TrainConfig(), 32011, "m.json") == 32064
    assert model_vocab(TrainConfig(vocab_size=32064), 32011, "m.json") == 32064
    assert build_model(TrainConfig(), 32064).model.embed_tokens.weight.shape == (32064, 128)


def test_vocab_that_does_not_fit_the_model_is_a_clear_error():
    with pytest.raises(
        TrainError, match=r"m\.json: the tokenizer has 32011 tokens but train\.vocab_size is 32000.*32064"
    ):
        model_vocab(TrainConfig(vocab_size=32000), 32011, "m.json")


def test_config_rejects_a_seq_len_beyond_the_context():
    with pytest.raises(ValueError, match="seq_len 8192 exceeds the context length 4096"):
        TrainConfig(model="phi3-mini", seq_len=8192)


def test_activation_checkpointing_gives_the_same_gradients():
    batch = _batch(32, 2)
    grads = []
    for ckpt in (False, True):
        cfg = TrainConfig(precision="fp32", seq_len=32, activation_checkpointing=ckpt)
        model = build_model(cfg, 32064)
        model.train()
        sequence_loss(model, batch, parallel.start("cpu", "fp32")).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_phi3_mini_preset_has_phi3_minis_shape():
    """Built on the meta device (no memory): 3.82B parameters, as microsoft/Phi-3-mini-4k-instruct."""
    from transformers import Phi3ForCausalLM

    from train_handoff.model import phi3_config

    with torch.device("meta"):
        model = Phi3ForCausalLM(phi3_config(TrainConfig(model="phi3-mini"), 32064, 32000))
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (
        32,
        3072,
        32,
        8192,
    )
    assert c.max_position_embeddings == 4096 and c.vocab_size == 32064
    assert sum(p.numel() for p in model.parameters()) == 3_821_079_552
