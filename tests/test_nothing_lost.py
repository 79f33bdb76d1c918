"""Nothing lost (issue 20): mix's read plan covers every row once for any layout; hostile records and
damaged files are counted and kept aside; extraction is a pure function of the page; input counts come
from a path independent of the readers."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def _layout_file(path, rng: random.Random, first_id: int) -> int:
    """A Parquet part of random row groups: many small ones, some large (by text), in random order."""
    n = 0
    with pq.ParquetWriter(path, pa.schema([("id", pa.int64()), ("text", pa.large_string())])) as w:
        for _ in range(rng.randint(0, 7)):
            rows = rng.choice([1, 2, 3, 5, 8, 13, 40])
            size = rng.choice([10, 50, 400, 3000])
            ids = list(range(first_id + n, first_id + n + rows))
            w.write_table(pa.table({"id": ids, "text": ["x" * size] * rows}, schema=w.schema))
            n += rows
    return n


@pytest.mark.parametrize("seed", range(40))
def test_read_plan_covers_every_row_once_for_any_layout(tmp_path, monkeypatch, seed):
    """Property test over random row-group layouts and core counts: each row of each stage is read by
    exactly one task, at the position the task says (its `row`). Fails if a run of small groups is
    continued across a split large group (rows read twice, others never)."""
    from pipeline.stages.mix import stage as mix

    rng = random.Random(seed)
    monkeypatch.setattr(mix, "TASK_BYTES", rng.choice([500, 4000, 20_000, 1 << 22]))
    files, expected = {}, {}
    for s in range(rng.randint(1, 3)):
        stage, paths, n = f"s{s}", [], 0
        for p in range(rng.randint(1, 3)):
            path = str(tmp_path / f"{stage}-{p}.parquet")
            n += _layout_file(path, rng, n)
            paths.append(path)
        files[stage], expected[stage] = paths, n
    tasks = mix._read_tasks(files, cores=rng.choice([1, 2, 3, 8, 32]))

    for stage, n in expected.items():
        seen = [0] * n
        for t in (t for t in tasks if t["stage"] == stage):
            ids = pq.ParquetFile(t["path"]).read_row_groups(range(t["first"], t["last"]))["id"].to_pylist()
            got = ids[t["start"] : t["stop"]]
            assert len(got) == t["stop"] - t["start"], f"task {t} reads past its row groups"
            assert got == list(range(t["row"], t["row"] + len(got))), f"task {t} is not at its row"
            for i in got:
                seen[i] += 1
        assert seen == [1] * n, f"stage {stage}: rows read {[i for i, c in enumerate(seen) if c != 1]}"
