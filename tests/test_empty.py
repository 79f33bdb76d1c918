"""Empty is normal (issue 20, part 2): a stage with zero input or zero kept documents completes with a
record and an empty typed part; the later stages run on it and say so; a mix phase left with no tokens is
a user error naming the phase. Everything runs through the real runner on a real in-process Ray."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.runner import read_record, run_pipeline
from pipeline.tokenizer import PHI3_OFFLINE
from pipeline.tools.status import print_status
from tests.test_signals import GOOD, _onestopenglish

MIX = {
    "tokenizer": str(PHI3_OFFLINE),
    "shard_tokens": 8000,
    "batch_size": 16,
    "phase1": {"sources": [{"name": "web", "stage": "dedup", "weight": 1.0}]},
    "phase2": {"sources": [{"name": "web", "stage": "dedup", "weight": 1.0}]},
}


def _kept_files(output: str, stage: str) -> list[str]:
    return storage.list_files(storage.join(output, stage), suffix=".parquet")


def _assert_empty_typed(output: str, stage: str) -> None:
    """The stage's record says 0 kept, and its kept part is a readable, empty Parquet file with columns."""
    files = _kept_files(output, stage)
    assert files, f"{stage}: no kept part at all"
    tables = [pq.read_table(f) for f in files]
    assert sum(t.num_rows for t in tables) == 0
    assert {"id", "text"} <= set(tables[0].column_names), (stage, tables[0].schema)


@pytest.fixture
def corpus(tmp_path):
    texts = [GOOD, *_onestopenglish(6)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def test_select_keeping_nothing_the_later_stages_run_empty_and_say_so(
    ray_local, write_config, corpus, tmp_path, capsys
):
    cfg = {
        "ingest": {"inputs": [{"path": str(corpus), "source": "web/test"}]},
        "annotate": {"workers": 1, "batch_size": 8},
        "select": {"lang": ["zz"]},  # no document is in this language
        "dedup": {},
        "decontaminate": {},
    }
    said: list[str] = []
    records = run_pipeline(load_config(write_config(cfg)), log=said.append)
    out = str(tmp_path / "out")
    by = {r["stage"]: r for r in records}
    assert list(by) == ["ingest", "annotate", "select", "dedup", "decontaminate"]
    assert by["select"]["docs_in"] == 7 and by["select"]["docs_out"] == 0
    assert by["select"]["dropped"] == {"lang": 7}
    for stage in ("select", "dedup", "decontaminate"):
        assert read_record(out, stage)["status"] == "complete"
        _assert_empty_typed(out, stage)
    for stage in ("dedup", "decontaminate"):
        assert by[stage]["docs_in"] == by[stage]["docs_out"] == 0 and by[stage]["dropped"] == {}
    assert "[dedup] select kept no documents: dedup runs on an empty input" in said, said
    assert "[decontaminate] dedup kept no documents: decontaminate runs on an empty input" in said, said
    assert any(s.startswith("[decontaminate] done") and "0 in, 0 kept" in s for s in said), said
    print_status(out)
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["dedup"][1:4] == ["complete", "0", "0"], rows
    assert rows["decontaminate"][1:4] == ["complete", "0", "0"], rows


def test_a_mix_phase_with_no_tokens_is_a_user_error_naming_the_phase(
    ray_local, write_config, corpus, tmp_path
):
    cfg = {
        "ingest": {"inputs": [{"path": str(corpus), "source": "web/test"}]},
        "annotate": {"workers": 1, "batch_size": 8},
        "select": {"lang": ["zz"]},
        "dedup": {},
        "mix": MIX,
    }
    with pytest.raises(UserError) as e:
        run_pipeline(load_config(write_config(cfg)), log=lambda m: None)
    assert re.match(r"mix\.phase1: .*source 'web' \(stage dedup\).* holds 0 tokens", str(e.value), re.S), (
        e.value
    )
    assert read_record(str(tmp_path / "out"), "dedup")["docs_out"] == 0  # the stages before mix completed
    assert read_record(str(tmp_path / "out"), "mix") is None


def test_an_empty_input_file_goes_through_ingest_and_annotate(ray_local, write_config, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = {
        "ingest": {"inputs": [{"path": str(empty), "source": "web/test"}]},
        "annotate": {"workers": 1, "batch_size": 8},
        "select": {},
    }
    records = run_pipeline(load_config(write_config(cfg)), log=lambda m: None)
    out = str(tmp_path / "out")
    assert [(r["stage"], r["docs_in"], r["docs_out"]) for r in records] == [
        ("ingest", 0, 0),
        ("annotate", 0, 0),
        ("select", 0, 0),
    ]
    for stage in ("ingest", "annotate", "select"):
        _assert_empty_typed(out, stage)
