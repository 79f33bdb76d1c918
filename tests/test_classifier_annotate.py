"""Teacher annotation end to end through real vLLM (CPU) with the tiny random Phi-3.

The tiny model's replies are noise, so almost every answer is unparseable: the test checks that each
sampled document ends up either labeled or kept aside with its reply and reason, and that the counts add
up. Parsing itself is tested on real reply shapes in test_classifier.py.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from classifiers.annotate import annotate
from classifiers.rubric import PROMPT_VERSION
from synth.backends import BackendConfig

pytestmark = pytest.mark.slow


def test_annotate_through_vllm_tiny_phi3(ray_local, tmp_path):
    from classifiers.labels import read_labels

    real = read_labels(["tests/data/labels/edu-reference.jsonl.zst"])
    docs = [
        {"id": f"d{i}", "text": real.texts[i][:3000], "source": real.sources[i], "url": None, "meta": "{}"}
        for i in list(range(0, 6)) + list(range(len(real) - 4, len(real)))
    ]
    (tmp_path / "out" / "ingest").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(docs), tmp_path / "out" / "ingest" / "part-0.parquet")

    backend = BackendConfig(
        model="tiny-phi3",
        sampling={"max_tokens": 24, "temperature": 0.8},
        vllm={
            "num_gpus": 0,
            "gpu_memory_utilization": 0.2,
            "max_model_len": 2048,
            "enforce_eager": True,
            "batch_size": 8,
        },
    )
    summary = annotate(
        str(tmp_path / "out"), "ingest", 5, backend, str(tmp_path / "labels"), max_doc_chars=1500
    )

    assert summary["sampled"] == 5 and summary["teacher"] == "vllm:tiny-phi3"
    assert summary["labeled"] + summary["unparsed"] == 5
    assert sum(summary["unparsed_reasons"].values()) == summary["unparsed"]
    assert set(summary["by_source"]) == {"web/python-docs", "web/onestopenglish"}  # stratified: both sources
    lab = pq.read_table(tmp_path / "labels" / "labels.parquet")
    aside = pq.read_table(tmp_path / "labels" / "unparsed.parquet")
    assert lab.column_names[:5] == ["id", "text", "score", "teacher", "prompt_version"]
    assert lab.num_rows == summary["labeled"] and aside.num_rows == summary["unparsed"]
    assert set(lab["id"].to_pylist()) | set(aside["id"].to_pylist()) <= {d["id"] for d in docs}
    assert all(
        v == PROMPT_VERSION for v in aside["prompt_version"].to_pylist() + lab["prompt_version"].to_pylist()
    )
    assert all(r is not None for r in aside["reason"].to_pylist())
    assert json.loads((tmp_path / "labels" / "annotate.json").read_text())["sampled"] == 5
