"""LSH band/row math: the chance that a pair at Jaccard s becomes a candidate, and bands x rows for a
threshold.

A pair at Jaccard s agrees on one MinHash value with probability s, on a whole band of r rows with s**r,
and collides in at least one of b bands with 1 - (1 - s**r)**b: the S-curve whose steepest point is
about (1/b)**(1/r). FineWeb's 14 bands x 8 rows put it near 0.72.
"""

from __future__ import annotations

REPORT_AT = (0.5, 0.7, 0.8, 0.9)


def detection_probability(jaccard: float, bands: int, rows: int) -> float:
    """Probability that two documents at this Jaccard similarity share at least one band key."""
    return 1.0 - (1.0 - jaccard**rows) ** bands


def bands_rows_for(threshold: float, num_perm: int) -> tuple[int, int]:
    """Bands and rows (bands * rows <= num_perm) minimising false positives + false negatives around
    `threshold`, integrated over the S-curve: datasketch's own choice for MinHashLSH (a private helper,
    used rather than copied so both agree). Imported here: datasketch loads scipy (0.4 s) and a config
    import must stay light."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


def threshold_of(bands: int, rows: int) -> float:
    """Jaccard similarity at the S-curve's steepest point, (1/b)**(1/r)."""
    return (1.0 / bands) ** (1.0 / rows)
