"""`phicurate status OUTPUT`: the stages of a run and their counts, from the `_stage.json` records."""

from __future__ import annotations

from pipeline import storage
from pipeline.errors import UserError
from pipeline.registry import ORDER


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


def print_status(output: str) -> None:
    records = stage_records(output)
    if not records:
        print(f"{output}: no stage has run yet")
        return
    head = (
        f"{'stage':<14}{'status':<12}{'docs in':>10}{'kept':>10}{'dropped':>10}{'tokens':>14}{'wall s':>9}"
        "  drop reasons"
    )
    print(head)
    print("-" * len(head))
    for stage, r in records.items():
        dropped = r.get("dropped") or {}
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(dropped.items(), key=lambda kv: -kv[1]))
        print(
            f"{stage:<14}{r['status']:<12}{r.get('docs_in', ''):>10}{r.get('docs_out', ''):>10}"
            f"{sum(dropped.values()) if r.get('status') == 'complete' else '':>10}"
            f"{r.get('tokens_out', ''):>14}"
            f"{r.get('wall_s', ''):>9}  {reasons}"
        )
