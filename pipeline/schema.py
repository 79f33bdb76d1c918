"""The one document schema that flows through every stage (DESIGN.md, "Documents").

Stages add signal columns; they never remove these. `drop_reason` is null for kept documents
and names the first rule that dropped a document otherwise; `drop_detail` says more (the file
and offset of a bad record, the id a duplicate duplicates, the benchmark item a document hit).
"""

import hashlib

import pyarrow as pa
import pyarrow.compute as pc

DOC_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("text", pa.large_string()),
    pa.field("source", pa.string(), nullable=False),
    pa.field("url", pa.string()),
    pa.field("meta", pa.string()),
]
DROP_FIELDS = [pa.field("drop_reason", pa.string()), pa.field("drop_detail", pa.string())]

DOC_WITH_DROP_SCHEMA = pa.schema(DOC_FIELDS + DROP_FIELDS)


def stable_id(*parts: object) -> str:
    """A short, stable document id: the same source and position always give the same id."""
    h = hashlib.sha1("\x1f".join(str(p) for p in parts).encode("utf-8"))
    return h.hexdigest()[:20]


def count_words(texts) -> pa.Array:
    """Whitespace-separated words per text (null counts 0): the `tokens_out` of text stages and annotate's
    `n_words`."""
    return pc.cast(pc.count_substring_regex(pc.fill_null(texts, ""), r"\S+"), pa.int64())
