"""Recipe arithmetic: the hash-bucket cut to a token target with epochs (its tolerance), budgets from
weights, impossible shares."""

import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.stages.mix.recipes import SELECT_BITS, PhaseRecipe, buckets, cut, doc_hash, source_targets


def _tokens_by_bucket(doc_tokens: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray]:
    b = buckets(doc_hash(key, [f"d{i}" for i in range(len(doc_tokens))], ["web"] * len(doc_tokens)))
    return b, np.bincount(b, weights=doc_tokens, minlength=1 << SELECT_BITS).astype(np.int64)


@pytest.mark.parametrize("n_docs", [200, 200_000])
def test_cut_reaches_the_target_within_its_tolerance_and_never_beyond_max_epochs(n_docs):
    """The stated tolerance: |tokens - target| <= the tokens of the hash bucket at the cut; on a small
    source that is one document (two on a collision), on a large one about 1/65,536 of its tokens. The
    tokens the cut reports are what its documents hold, counted per document."""
    doc_tokens = np.random.default_rng(0).integers(50, 500, size=n_docs)
    total = int(doc_tokens.sum())
    b, hist = _tokens_by_bucket(doc_tokens, "0/phase1/web/select")
    for target, max_epochs in (
        (1_000, 1),
        (total // 3, 1),
        (total, 1),
        (int(total * 2.5), 3),
        (total * 2, 2),
    ):
        c = cut(hist, target, max_epochs)
        copies = c.copies(b)
        got = int((doc_tokens * copies).sum())
        assert got == c.tokens
        assert abs(got - target) <= c.tolerance, (target, got, c)
        assert got <= total * max_epochs  # max_epochs holds exactly
        assert copies.max() - copies.min() <= 1  # whole passes plus at most one more copy
        if n_docs == 200:
            assert c.tolerance <= 2 * doc_tokens.max()
        else:
            assert c.tolerance <= 4 * total / (1 << SELECT_BITS)
            assert abs(got - target) <= 1e-4 * total
    # the binding source of a null budget takes all its documents once
    c = cut(hist, total - 1, 1)
    assert (c.copies(b) == 1).all() and c.tokens == total
    # a cut that would reach the target only by passing max_epochs stops below it
    c = cut(hist, total, 1)
    assert c.tokens == total
    assert cut(hist, 0, 1).tokens == 0


def test_the_hash_is_seeded_and_per_document():
    ids = [f"d{i}" for i in range(1000)]
    a = doc_hash("7/phase1/web/select", ids, ["web"] * 1000)
    assert np.array_equal(a, doc_hash("7/phase1/web/select", ids, ["web"] * 1000))
    assert np.array_equal(a[::-1], doc_hash("7/phase1/web/select", ids[::-1], ["web"] * 1000))  # order-free
    assert (a != doc_hash("8/phase1/web/select", ids, ["web"] * 1000)).mean() > 0.99
    assert (a != doc_hash("7/phase1/web/select", ids, ["other"] * 1000)).mean() > 0.99
    # spread evenly over the buckets: the 16 top-level ranges each get about 1/16 of the documents
    counts = np.bincount(buckets(a, 4), minlength=16)
    assert counts.min() > 30 and counts.max() < 100


def _recipe(**phase):
    return PhaseRecipe.model_validate(phase)


def test_null_budget_is_what_the_binding_source_allows():
    r = _recipe(
        sources=[
            {"name": "web", "stage": "dedup", "weight": 0.75},
            {"name": "syn", "stage": "synth", "weight": 0.25, "max_epochs": 2},
        ]
    )
    # web allows 1000 / 0.75 = 1333; syn allows 100 * 2 / 0.25 = 800: syn binds
    assert source_targets("phase1", r, {"web": 1000, "syn": 100}) == {"web": 600, "syn": 200}


def test_token_counts_and_impossible_shares():
    r = _recipe(
        sources=[
            {"name": "a", "stage": "dedup", "tokens": 500},
            {"name": "b", "stage": "synth", "tokens": 300, "max_epochs": 2},
        ]
    )
    assert source_targets("phase2", r, {"a": 600, "b": 150}) == {"a": 500, "b": 300}
    with pytest.raises(
        UserError,
        match=r"source 'b' \(stage synth\) needs 300 tokens \(its 'tokens'\) but holds 100 tokens x "
        r"max_epochs 2 = 200: raise its max_epochs to 3",
    ):
        source_targets("phase2", r, {"a": 600, "b": 100})
    with pytest.raises(UserError, match=r"source 'a' .* holds 0 tokens .* loosen its 'where' rules"):
        source_targets("phase2", r, {"a": 0, "b": 300})
