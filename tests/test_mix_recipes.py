"""Recipe arithmetic: sampling to a token target with epochs, budgets from weights, impossible shares."""

import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.stages.mix.recipes import PhaseRecipe, sample_documents, source_targets


def test_sampling_reaches_the_target_within_one_document():
    doc_tokens = np.random.default_rng(0).integers(50, 500, size=200)
    total = int(doc_tokens.sum())
    for target in (0, 1_000, total // 2, total, int(total * 2.5)):
        idx = sample_documents(doc_tokens, target, "k")
        assert abs(int(doc_tokens[idx].sum()) - target) <= doc_tokens.max() // 2 + 1
        counts = np.bincount(idx, minlength=len(doc_tokens))
        assert counts.max() - counts.min() <= 1  # epochs are whole passes plus at most one more copy
    assert np.array_equal(sample_documents(doc_tokens, 5_000, "k"), sample_documents(doc_tokens, 5_000, "k"))
    assert not np.array_equal(
        sample_documents(doc_tokens, 5_000, "k"), sample_documents(doc_tokens, 5_000, "other")
    )


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
