"""report: memory does not grow with the text of the corpus, pictures come from a seeded sample, totals from
the records."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from tests.conftest import ROOT

ROWS, GROUPS = 6000, 6  # per annotate file (two files)
TEXT_BYTES = 10_000  # per document: 120 MB of text in all, decoded

# Run in a fresh process, so its peak RSS is the report's alone.
MEASURE = """
import json, resource, sys
from pipeline.tools import report
report.SAMPLE_ROWS = 2000
report.write_report(sys.argv[1])
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _record(out, stage: str, docs_in: int, docs_out: int, dropped: dict, **extra) -> None:
    storage.make_dir(f"{out}/{stage}")
    storage.write_json(
        f"{out}/{stage}/_stage.json",
        {
            "stage": stage,
            "status": "complete",
            "docs_in": docs_in,
            "docs_out": docs_out,
            "dropped": dropped,
            "tokens_out": 10 * docs_out,
            "wall_s": 1.0,
            "details": {},
            **extra,
        },
    )


def _output(out, with_text: bool) -> None:
    """ingest and annotate records and annotate's Parquet parts: signal columns, `text` only if asked."""
    n = 2 * ROWS
    _record(out, "ingest", n + 5, n, {"empty_text": 5})
    _record(out, "annotate", n, n, {}, parts=2, parts_reused=1)
    rng = np.random.default_rng(7)
    for k in range(2):
        writer = None
        for g in range(GROUPS):
            m = ROWS // GROUPS
            start = k * ROWS + g * m
            cols = {
                "id": pa.array([f"d{start + i}" for i in range(m)]),
                "source": pa.array(["web/a"] * m),
                "lang": pa.array(rng.choice(["en", "fr", "de"], m, p=[0.7, 0.2, 0.1])),
                "n_words": pa.array(rng.integers(10, 2000, m)),
                "gopher_words": pa.array(rng.integers(10, 2000, m)),
                "lang_score": pa.array(rng.random(m)),
            }
            if with_text:  # each document's text distinct, so nothing is shared in memory once decoded
                cols["text"] = pa.array([(f"doc {start + i} " * TEXT_BYTES)[:TEXT_BYTES] for i in range(m)])
            t = pa.table(cols)
            writer = writer or pq.ParquetWriter(f"{out}/annotate/part-{k}.parquet", t.schema)
            writer.write_table(t)
        writer.close()


def _report(out) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", MEASURE, str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_report_reads_no_text_and_samples(tmp_path):
    without, with_text = tmp_path / "no-text", tmp_path / "text"
    _output(without, with_text=False)
    _output(with_text, with_text=True)
    text_mb = 2 * ROWS * TEXT_BYTES / 2**20

    small, big = _report(without), _report(with_text)
    # Reading annotate's text column whole would add its ~114 MB; streaming the columns a picture needs adds
    # nothing that depends on the text.
    assert big["peak_mb"] - small["peak_mb"] < 0.25 * text_mb, (small, big, text_mb)

    # The same pictures with and without the text: the text is not read, and the sample is seeded.
    for png in ("signal-gopher_words.png", "signal-lang_score.png", "languages.png"):
        assert (without / "report" / png).read_bytes() == (with_text / "report" / png).read_bytes(), png

    page = (with_text / "report.html").read_text()
    m = re.search(r"histograms of (\d+) of (\d+) annotated documents \(a seeded sample\)", page)
    assert m and int(m.group(2)) == 2 * ROWS and 1800 <= int(m.group(1)) <= 2000, m
    # totals from the records, parts from the record too
    row = re.search(r"<tr data-stage='annotate'>(.*?)</tr>", page).group(1)
    assert f"data-key=docs_in>{2 * ROWS}<" in row and "<td class=n>2 (1)</td>" in row
    row = re.search(r"<tr data-stage='ingest'>(.*?)</tr>", page).group(1)
    assert f"data-key=docs_in>{2 * ROWS + 5}<" in row and "data-key=dropped>5<" in row
