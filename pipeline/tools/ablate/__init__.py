"""Data ablations: does a curation choice train a better model per token? See docs/ablate.md."""
