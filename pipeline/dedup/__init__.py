"""Exact and MinHash-LSH near-duplicate removal on Ray (stage `dedup`; also used by `synth` against the web)."""

from pipeline.dedup.core import dedup_dataset

__all__ = ["dedup_dataset"]
