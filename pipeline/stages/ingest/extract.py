"""HTML to main text with datatrove's Trafilatura extractor (the settings FineWeb used)."""

from __future__ import annotations

from functools import lru_cache

import pyarrow as pa


@lru_cache(maxsize=None)
def _extractor(favour_precision: bool):
    from datatrove.pipeline.extractors import Trafilatura

    return Trafilatura(favour_precision=favour_precision)


def extract_html(batch: pa.Table, favour_precision: bool = True) -> pa.Table:
    """Ray Data task: fill `text` from `html` for rows that carry HTML, then drop the `html` column.

    A failed extraction is a drop (`extract_failed`, with the HTML kept aside), never a crash; an empty
    one is left to the empty-text check.
    """
    extractor = _extractor(favour_precision)
    rows = batch.to_pylist()
    for r in rows:
        html = r.pop("html")
        if html is None or r["drop_reason"] is not None:
            continue
        try:
            r["text"] = extractor.extract(html) or ""
        except Exception as e:  # trafilatura raises many types on broken markup
            r["text"] = html[:65_536]
            r["drop_reason"] = "extract_failed"
            r["drop_detail"] = f"{r['meta']}: {type(e).__name__}: {e}"[:2000]
    schema = batch.schema.remove(batch.schema.get_field_index("html"))
    return pa.Table.from_pylist(rows, schema=schema)
