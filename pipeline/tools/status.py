"""`phicurate status OUTPUT`: the stages of a run, their counts and the chain of counts between them, from
the `_stage.json` records alone (nothing else is read, so it is instant at any corpus size)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import storage
from pipeline.errors import UserError
from pipeline.registry import BY_NAME, ORDER

# Stages whose docs_in counts something of their own (the stage sets StageOutput.docs_in), not the documents
# their upstream kept: their docs_in has no upstream figure to match. Every other stage reads one upstream
# stage, whatever the config, and its docs_in must be what that stage kept.
OWN_COUNT = {
    "ingest": "records its readers saw",
    "synth": "prompts",
    "mix": "documents the phases read",
    "train": "sequences packed",
}


@dataclass
class Link:
    """How one stage's docs_in relates to what came before it."""

    stage: str
    upstream: str | None  # the stage it reads, where docs_in is that stage's kept count
    ok: bool  # the chain holds here (and docs_in = kept + dropped)
    note: str  # what the check found, in words


def stage_records(output: str) -> dict[str, dict]:
    """Records of the stages present in an output directory, complete or not (a missing record =
    incomplete)."""
    if not storage.exists(output):
        raise UserError(f"{output}: no such output directory")
    out = {}
    for stage in ORDER:
        if storage.exists(storage.join(output, stage)):
            out[stage] = storage.read_json(storage.join(output, stage, "_stage.json")) or {
                "status": "incomplete"
            }
    return out


def _upstreams(stage: str) -> tuple[str, ...] | None:
    """The registry's inputs of a stage whose docs_in is its upstream's kept count; None where they depend
    on the config, which an output directory does not hold."""
    try:
        return BY_NAME[stage].inputs(None)
    except AttributeError:
        return None


def chain(records: dict[str, dict]) -> dict[str, Link]:
    """Per complete stage: its own identity (docs_in = kept + dropped) and its docs_in against what its
    upstream kept, as recorded."""
    links = {}
    for stage, r in records.items():
        if r.get("status") != "complete":
            continue
        lacks = [k for k in ("docs_in", "docs_out") if not isinstance(r.get(k), int)]
        if lacks:  # a hand-made or foreign record: said, not a crash of the whole table
            links[stage] = Link(stage, None, False, f"BROKEN: the record has no {' or '.join(lacks)}")
            continue
        dropped = sum((r.get("dropped") or {}).values())
        if r["docs_in"] != r["docs_out"] + dropped:
            links[stage] = Link(
                stage,
                None,
                False,
                f"BROKEN: {r['docs_in']} in != {r['docs_out']} kept + {dropped} dropped",
            )
            continue
        if stage in OWN_COUNT:
            links[stage] = Link(stage, None, True, f"in = {OWN_COUNT[stage]}")
            continue
        ups = _upstreams(stage)
        if ups is None or len(ups) != 1:
            links[stage] = Link(stage, None, True, f"reads {', '.join(ups) if ups else 'per its config'}")
            continue
        up = ups[0]
        rec = records.get(up)
        if rec is None or rec.get("status") != "complete":
            links[stage] = Link(stage, up, False, f"BROKEN: {up} has no complete record")
        elif rec.get("docs_out") != r["docs_in"]:
            links[stage] = Link(
                stage,
                up,
                False,
                f"BROKEN: {up} kept {rec.get('docs_out')} (rerun {stage} if {up} changed since it ran)",
            )
        else:
            links[stage] = Link(stage, up, True, f"in = {up} kept")
    return links


def print_status(output: str) -> list[Link]:
    """Print the table; return the links where the chain breaks (empty: it holds)."""
    records = stage_records(output)
    if not records:
        print(f"{output}: no stage has run yet")
        return []
    links = chain(records)
    head = (
        f"{'stage':<14}{'status':<12}{'docs in':>10}{'kept':>10}{'dropped':>10}{'parts':>12}{'tokens':>14}"
        f"{'wall s':>9}  {'chain':<40}  drop reasons"
    )
    print(head)
    print("-" * len(head))
    for stage, r in records.items():
        done = r.get("status") == "complete"
        dropped = r.get("dropped") or {}
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(dropped.items(), key=lambda kv: -kv[1]))
        parts = f"{r['parts']} ({r.get('parts_reused', 0)})" if "parts" in r else ""
        link = links[stage].note if stage in links else ""
        print(
            f"{stage:<14}{r['status']:<12}{r.get('docs_in', ''):>10}{r.get('docs_out', ''):>10}"
            f"{sum(dropped.values()) if done else '':>10}{parts:>12}{r.get('tokens_out', ''):>14}"
            f"{r.get('wall_s', ''):>9}  {link:<40}  {reasons}"
        )
    broken = [x for x in links.values() if not x.ok]
    print(
        "parts: N (R reused from a killed run's commits); chain: "
        + ("holds" if not broken else "BROKEN at " + ", ".join(x.stage for x in broken))
    )
    return broken
