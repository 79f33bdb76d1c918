"""Signals computed once per document and stored as columns: language, heuristic values, quality score.

`annotate_table` is the plain entry point (synth's quality checks use it too); the `annotate` stage runs
`Annotator` in a Ray actor pool so each worker loads its models once.
"""

from __future__ import annotations

from functools import lru_cache

import pyarrow as pa

from pipeline.schema import count_words
from pipeline.stages.annotate.signals.heuristics import HEURISTIC_COLUMNS, measure_batch
from pipeline.stages.annotate.signals.langid import LanguageID

SIGNAL_FIELDS = [
    pa.field("lang", pa.string()),
    pa.field("lang_score", pa.float64()),
    pa.field("n_words", pa.int64()),  # whitespace-separated words: the runner's and tune's token count
    *[pa.field(name, pa.type_for_alias(kind)) for name, kind in HEURISTIC_COLUMNS],
]


class Annotator:
    """Adds the signal columns to an Arrow table of documents; drops nothing."""

    def __init__(self, lid_model: str | None = None, edu_model: str | None = None):
        self.lid = LanguageID(lid_model)
        self.edu = None
        if edu_model:
            from classifiers.score import EduScorer

            self.edu = EduScorer(edu_model)

    def __call__(self, table: pa.Table) -> pa.Table:
        texts = [t or "" for t in table["text"].to_pylist()]
        langs, scores = self.lid.predict(texts)
        values = measure_batch(texts)
        cols = {
            "lang": pa.array(langs, pa.string()),
            "lang_score": pa.array(scores, pa.float64()),
            # the runner's token count (runner._tally), so tune's token shares match select's tokens_out
            "n_words": count_words(pa.array(texts, pa.large_string())),
        }
        for name, kind in HEURISTIC_COLUMNS:
            cols[name] = pa.array(values[name], pa.type_for_alias(kind))
        if self.edu is not None:
            cols["edu_score"] = pa.array(self.edu.score(texts), pa.float64())
        for name, col in cols.items():
            if name in table.column_names:  # recomputed (e.g. a table annotated before): replace
                table = table.drop_columns([name])
            table = table.append_column(name, col)
        return table


@lru_cache(maxsize=4)
def _annotator(lid_model: str | None, edu_model: str | None) -> Annotator:
    return Annotator(lid_model, edu_model)


def annotate_table(table: pa.Table, cfg=None) -> pa.Table:
    """Signal columns for a table with a `text` column; `cfg` is an AnnotateConfig (None: lid.176, no
    edu_score).
    Models are loaded once per process."""
    lid = getattr(cfg, "lid_model", None)
    edu = getattr(cfg, "edu_model", None)
    return _annotator(lid, edu)(table)
