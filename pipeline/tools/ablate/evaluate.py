"""Held-out loss (nats per token) of a trained model on every held-out set, and MMLU accuracy by choice
log-likelihood.

The model is the one the train stage saved (Hugging Face format); the token ids come from the sets file, so
every arm and seed is scored on exactly the same tokens. Texts longer than the trained context are scored in
windows of the context (as the trainer packs them); each predicted token counts once.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BATCH = 16


def _windows(tokens: list[int], context: int) -> list[list[int]]:
    """Windows of context + 1 tokens, each sharing its last token with the next: every token after the
    first is predicted once."""
    return [tokens[i : i + context + 1] for i in range(0, max(len(tokens) - 1, 1), context)]


@torch.no_grad()
def _token_logprobs(
    model, seqs: list[list[int]], device, scored: list[int] | None = None
) -> list[np.ndarray]:
    """Per sequence: log p(token t | tokens < t) for its last `scored` tokens (default: all but the first).

    The output layer (hidden x vocabulary, nearly all of a small model's compute) runs only on the
    positions scored; right padding never reaches them."""
    out = []
    for i in range(0, len(seqs), BATCH):
        chunk = seqs[i : i + BATCH]
        keep = [len(s) - 1 for s in chunk] if scored is None else scored[i : i + BATCH]
        width = max(len(s) for s in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        for k, s in enumerate(chunk):
            ids[k, : len(s)] = torch.tensor(s)
        hidden = model.model(input_ids=ids[:, :-1].to(device)).last_hidden_state
        rows = torch.tensor([k for k, n in enumerate(keep) for _ in range(n)], dtype=torch.long)
        cols = torch.tensor([p for s, n in zip(chunk, keep) for p in range(len(s) - 1 - n, len(s) - 1)])
        logp = F.log_softmax(model.lm_head(hidden[rows, cols]).float(), dim=-1)
        picked = logp.gather(-1, ids[rows, cols + 1][:, None].to(device))[:, 0].cpu().numpy()
        out += np.split(picked, np.cumsum(keep)[:-1])
    return out


def set_loss(model, items: list[dict], context: int, device) -> dict:
    windows = [w for item in items for w in _windows(item["tokens"], context) if len(w) > 1]
    lp = _token_logprobs(model, windows, device)
    n = int(sum(len(x) for x in lp))
    return {"loss": float(-sum(x.sum() for x in lp) / n), "tokens": n, "items": len(items)}


def mmlu_accuracy(model, items: list[dict], context: int, device) -> dict:
    """Share of items whose answer has the highest summed log-likelihood of its tokens after the prompt
    (the prompt cut from the left to fit the context); chance is 1/4."""
    seqs, spans = [], []
    for item in items:
        for choice in item["choice_tokens"]:
            keep = max(1, context + 1 - len(choice))
            seq = (item["prompt_tokens"][-keep:] + choice)[-(context + 1) :]
            seqs.append(seq)
            spans.append(min(len(choice), len(seq) - 1))
    lp = _token_logprobs(model, seqs, device, scored=spans)
    scores = np.array([x.sum() for x in lp]).reshape(len(items), -1)
    right = scores.argmax(axis=1) == np.array([i["answer"] for i in items])
    return {"accuracy": float(right.mean()), "items": len(items), "chance": 1 / scores.shape[1]}


def evaluate(model_dir: str, sets: dict, context: int, device: str = "cpu") -> dict:
    """{set: {loss, tokens, items}} and, per MMLU set, {set + '_acc': {accuracy, items, chance}}."""
    from transformers import Phi3ForCausalLM

    dev = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    model = Phi3ForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(dev).eval()
    out = {}
    for name, s in sets["sets"].items():
        out[name] = set_loss(model, s["items"], context, dev)
        if s["kind"] == "mmlu":
            out[f"{name}_acc"] = mmlu_accuracy(model, s["items"], context, dev)
    return out
