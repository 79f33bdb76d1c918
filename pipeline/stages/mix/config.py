"""Config of stage `mix`: the tokenizer, the shard size and the recipe of each phase."""

from __future__ import annotations

from pydantic import Field

from pipeline.section import Section
from pipeline.stages.mix.recipes import PhaseRecipe
from pipeline.tokenizer import PHI3_HUB


class MixConfig(Section):
    """Tokenizer, shuffling and shard size for both phases, and each phase's recipe."""

    tokenizer: str = PHI3_HUB  # Hugging Face Hub id or local directory (offline: tests/data/tokenizer/phi3)
    seed: int = 0  # fixes the documents sampled and their order: same seed, byte-identical shards
    shard_tokens: int = Field(100_000_000, ge=1)  # a shard is closed once it holds this many tokens
    batch_size: int = Field(256, ge=1)  # documents per tokenization batch in Ray
    phase1: PhaseRecipe
    phase2: PhaseRecipe

    def recipes(self) -> dict[str, PhaseRecipe]:
        return {"phase1": self.phase1, "phase2": self.phase2}

    def stages_read(self) -> tuple[str, ...]:
        """The stages the recipes draw documents from: mix reruns when one of them changes."""
        return tuple(sorted({s.stage for r in self.recipes().values() for s in r.sources}))
