"""Config of stage `dedup`: exact and MinHash-LSH near-duplicate removal, and the banding it implies."""

from __future__ import annotations

from pydantic import Field, model_validator

from pipeline.section import Section
from pipeline.stages.dedup.params import REPORT_AT, bands_rows_for, detection_probability, threshold_of

DEFAULT_BANDS_ROWS = (14, 8)  # FineWeb's choice: S-curve midpoint near Jaccard 0.72


class DedupConfig(Section):
    exact: bool = True  # drop copies whose NFKC, case-folded, whitespace-collapsed text is identical
    fuzzy: bool = True  # drop near duplicates found by MinHash LSH
    ngram: int = Field(5, ge=1)  # shingles are word n-grams of the lower-cased text, punctuation dropped
    num_perm: int = Field(112, ge=2, le=1024)  # MinHash permutations (signature length)
    bands: int | None = Field(None, ge=1)  # LSH bands; with `rows`; default 14 unless `threshold` is set
    rows: int | None = Field(None, ge=1)  # rows (signature values) per band; default 8
    # target Jaccard; bands/rows derived (datasketch's optimum)
    threshold: float | None = Field(None, gt=0, lt=1)
    seed: int = 1  # MinHash permutation seed: same seed, same clusters
    # the kept document is the one with the highest score, then smallest id
    score_column: str | None = "edu_score"
    partitions: int | None = Field(None, ge=1)  # shuffle partitions; default max(cluster CPUs, rows / 1M)
    # drop near-duplicate candidate pairs whose true Jaccard of shingle sets is below this (two more shuffles)
    verify_threshold: float | None = Field(None, gt=0, le=1)

    @model_validator(mode="after")
    def _banding(self) -> "DedupConfig":
        if (self.bands is None) != (self.rows is None):
            raise ValueError(
                "give both 'bands' and 'rows', or neither (then 'threshold' or the default 14 x 8)"
            )
        if self.bands is not None and self.threshold is not None:
            raise ValueError("give either 'bands'/'rows' or 'threshold', not both")
        b, r = self.bands_rows()
        if b * r > self.num_perm:
            raise ValueError(f"bands x rows = {b} x {r} = {b * r} exceeds num_perm = {self.num_perm}")
        if not (self.exact or self.fuzzy):
            raise ValueError("'exact' and 'fuzzy' are both false: the stage would do nothing")
        return self

    def bands_rows(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.rows
        if self.threshold is not None:
            return bands_rows_for(self.threshold, self.num_perm)
        return DEFAULT_BANDS_ROWS

    def describe(self) -> str:
        """What `phicurate validate` prints: the banding and the chance of catching a pair at each Jaccard."""
        if not self.fuzzy:
            return "dedup: exact duplicates only"
        b, r = self.bands_rows()
        probs = ", ".join(f"J={j}: {detection_probability(j, b, r):.3f}" for j in REPORT_AT)
        return (
            f"dedup: word {self.ngram}-grams, {self.num_perm} permutations, {b} bands x {r} rows "
            f"(S-curve midpoint J={threshold_of(b, r):.2f}); detection probability {probs}"
        )
