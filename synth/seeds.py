"""Seeds for synthetic textbooks: topics from the config, and passages of good web documents.

Web passages follow Cosmopedia, which prompted with extracts of web samples so that generations
cover what the web covers, not only what a topic list names; sampling only documents with a high
`edu_score` keeps the seeds educational.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from pipeline.errors import UserError
from pipeline.section import Section


class WebSeedsConfig(Section):
    count: int = Field(0, ge=0)  # seed passages sampled from the kept web documents (0: topics only)
    min_edu_score: float | None = 3.0  # only documents with edu_score >= this; null: any kept document
    sources: list[str] | None = None  # only documents of these sources (e.g. web/python-docs); null: all
    # a passage is the document's start, cut at a paragraph or sentence end
    passage_chars: int = Field(1500, ge=100)
    seed: int = 0  # which documents are sampled: same seed and input, same passages


@dataclass(frozen=True)
class Seed:
    kind: str  # "topic" or "web"
    seed_id: str  # "subject/topic", or the web document's id
    subject: str  # the subject, or the web document's source
    topic: str  # the topic, or the web document's URL (may be empty)
    passage: str = ""  # web seeds only


def topic_seeds(topics: dict[str, list[str]]) -> list[Seed]:
    return [Seed("topic", f"{subject}/{t}", subject, t) for subject, ts in topics.items() for t in ts]


def passage(text: str, limit: int) -> str:
    """The start of a text, at most `limit` characters, ending at a paragraph break or sentence end if one is
    near."""
    if len(text) <= limit:
        return text.strip()
    cut = text[:limit]
    for sep in ("\n\n", ". ", "\n"):
        at = cut.rfind(sep)
        if at >= limit // 2:
            return cut[: at + (1 if sep == ". " else 0)].strip()
    return cut.strip()


def _sample_keys(batch: pa.Table, cfg: WebSeedsConfig) -> pa.Table:
    """This block's `count` documents with the smallest sampling keys (a hash of seed and id): a global
    top-k over blocks gives the same sample whatever the block layout."""
    keep = pa.array([True] * batch.num_rows)
    if cfg.min_edu_score is not None:
        keep = pc.and_(keep, pc.fill_null(pc.greater_equal(batch["edu_score"], cfg.min_edu_score), False))
    if cfg.sources is not None:
        keep = pc.and_(keep, pc.is_in(batch["source"], value_set=pa.array(cfg.sources)))
    batch = batch.filter(keep)
    keys = [hashlib.sha1(f"{cfg.seed}\x1f{i}".encode()).hexdigest() for i in batch["id"].to_pylist()]
    batch = batch.append_column("key", pa.array(keys, pa.string()))
    return batch.sort_by("key").slice(0, cfg.count)


def web_seeds(ds, cfg: WebSeedsConfig) -> list[Seed]:
    """Sample `cfg.count` passages from a Ray Dataset of kept documents."""
    if cfg.count == 0:
        return []
    if cfg.min_edu_score is not None and "edu_score" not in ds.schema().names:
        raise UserError(
            "synth.seeds.web.min_edu_score is set but the input documents have no edu_score column: "
            "give annotate an edu_model, or set synth.seeds.web.min_edu_score: null"
        )
    cols = ["id", "text", "source", "url"] + (["edu_score"] if cfg.min_edu_score is not None else [])
    rows = (
        ds.select_columns(cols).map_batches(_sample_keys, fn_args=(cfg,), batch_format="pyarrow").take_all()
    )
    rows = sorted(rows, key=lambda r: r["key"])[: cfg.count]
    return [
        Seed("web", r["id"], r["source"], r["url"] or "", passage(r["text"] or "", cfg.passage_chars))
        for r in rows
    ]
