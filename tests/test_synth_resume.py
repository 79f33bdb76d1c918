"""Synth by part against a real OpenAI-compatible HTTP teacher (a small deterministic server on 127.0.0.1,
reached through the `openai` backend and client, as `vllm serve` would be): a run SIGKILLed mid-generation
reruns only the prompts of the parts it had not committed and ends with what an uninterrupted run writes;
a run with other checks, or with prompts added at the end, reuses the cache part by part (issue 20, 5)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.config import parse_config
from pipeline.registry import BY_NAME
from pipeline.runner import RECORD, read_record, run_stage
from pipeline.stages.decontaminate.config import DATA_DIR
from tests.test_decontaminate_stage import _articles

pytestmark = pytest.mark.slow  # Ray runs of the whole stage; the kill test starts three

with gzip.open(f"{DATA_DIR}/HumanEval.jsonl.gz", "rt", encoding="utf-8") as _f:
    _LEAK = json.loads(next(_f))


def _prose(article: str) -> str:
    """An article's sentence lines: prose the quality checks keep (a list of titles is not)."""
    lines = [line.strip() for line in article.splitlines()]
    return "\n".join(x for x in lines if x.endswith((".", "!", "?")) and len(x.split()) >= 5)


ARTICLES = [_prose(a) for a in _articles(6)]
LEAK = " ".join((_LEAK["prompt"] + _LEAK["canonical_solution"]).split()) + "."
# what the teacher says, by prompt hash: prose (kept), a reply too short for QC, and one holding a HumanEval
# item (contaminated)
REPLIES = ARTICLES[:3] + ["Too short."] + ARTICLES[3:5] + [ARTICLES[5] + "\n" + LEAK]
WEB = [{"id": "w1", "text": ARTICLES[2], "source": "web/x", "url": "http://a", "meta": "{}"}]


class Teacher:
    """Answers chat completions deterministically and logs every prompt it is sent; with `answer` set,
    holds every request after that many (a teacher that stalls) until the client goes away."""

    def __init__(self):
        self.prompts: list[str] = []
        self.answer: int | None = None
        self.holding = threading.Event()
        self.lock = threading.Lock()
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][0]["content"]
                with teacher.lock:
                    teacher.prompts.append(prompt)
                    held = teacher.answer is not None and len(teacher.prompts) > teacher.answer
                if held:
                    teacher.holding.set()
                    time.sleep(600)  # until the killed client's socket is gone
                    return
                text = REPLIES[int(hashlib.sha1(prompt.encode()).hexdigest(), 16) % len(REPLIES)]
                reply = {
                    "id": "c",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": len(text.split()), "total_tokens": 2},
                }
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def sent(self) -> list[str]:
        with self.lock:
            out, self.prompts = self.prompts, []
        return out


@pytest.fixture
def teacher():
    t = Teacher()
    yield t
    t.server.shutdown()


def _synth(url: str, topics: dict | None = None, min_words: int = 20) -> dict:
    """Without synth's dedup, a global step after the parts (tested through Ray in test_synth_engine.py and
    the demo): the committed parts are the output, and what is resumed here is generation and the per-part
    checks; each run costs a minute less."""
    return {
        "backend": {
            "kind": "openai",
            "model": "teacher",
            "sampling": {"max_tokens": 64},
            # one actor, one request at a time: the parts are generated one after the other
            "openai": {"base_url": url, "concurrency": 1, "actors": 1, "timeout_s": 900, "max_retries": 0},
        },
        "topics": topics
        or {"biology": ["photosynthesis", "cell division"], "physics": ["gravity", "friction"]},
        "prompts": {"cells_per_seed": 3},
        "prompts_per_part": 4,  # 12 prompts: 3 parts
        "qc": {"min_words": min_words},
        "dedup": None,
        "decontamination": {
            "benchmarks": [
                {
                    "path": "bundled:HumanEval.jsonl.gz",
                    "name": "humaneval",
                    "fields": ["prompt", "canonical_solution"],
                    "id_field": "task_id",
                }
            ]
        },
    }


def _dedup_output(out) -> None:
    """dedup's output as a complete run leaves it: synth's web input."""
    (out / "dedup").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(WEB), out / "dedup" / "part-0.parquet")
    up = {"stage": "dedup", "status": "complete", "config_hash": "x", "input_fingerprint": "y"}
    up |= {"docs_in": 1, "docs_out": 1, "dropped": {}}
    storage.write_json(str(out / "dedup" / RECORD), up)


def _output(out) -> tuple:
    rec = read_record(str(out), "synth")
    d = out / "synth"
    kept = pq.read_table(sorted(str(p) for p in d.glob("*.parquet"))).to_pylist()
    dropped = pq.read_table(sorted(str(p) for p in (d / "dropped").glob("*.parquet"))).to_pylist()
    counts = {k: rec[k] for k in ("docs_in", "docs_out", "dropped", "tokens_out", "parts")}
    details = {k: v for k, v in rec["details"].items() if k != "cache_dir"}
    return sorted(kept, key=lambda r: r["id"]), sorted(dropped, key=lambda r: r["id"]), counts, details


def _phicurate(config, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(config), "--stages", "synth"],
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the driver and the Ray it started
    )


@pytest.mark.timeout(3000)  # three real runs, each starting Ray
def test_killed_mid_generation_reruns_only_uncommitted_parts(tmp_path, write_config, teacher):
    ingest = {"inputs": [{"path": "tests/data/demo", "source": "web/x"}]}
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    for out in (ref, killed):
        _dedup_output(out)
    cfg = {"ingest": ingest, "synth": _synth(teacher.url)}
    with open(tmp_path / "ref.log", "w") as log:
        assert _phicurate(write_config({**cfg, "run": {"output": str(ref)}}, "ref.yaml"), log).wait(900) == 0
    every = teacher.sent()
    assert len(every) == len(set(every)) == 12
    reference = _output(ref)
    assert reference[2]["docs_out"] > 0 and {"too_short", "contaminated:humaneval"} <= set(
        reference[2]["dropped"]
    ), reference[2]

    teacher.answer = 6  # the first part, then two prompts of the second: the third request of it stalls
    config = write_config({**cfg, "run": {"output": str(killed)}}, "killed.yaml")
    with open(tmp_path / "killed.log", "w") as log:
        proc = _phicurate(config, log)
        try:
            assert teacher.holding.wait(600), "the teacher was never asked a 7th prompt"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        before = teacher.sent()
        (work,) = killed.glob(".synth.tmp-*")
        assert len(list((work / "_parts").glob("*.json"))) == 1  # the first part only
        teacher.answer = None
        assert _phicurate(config, log).wait(900) == 0, f"see {tmp_path / 'killed.log'}"
    again = teacher.sent()
    committed = before[:4]  # one request at a time: the first four prompts were the committed part's
    assert len(again) == len(set(again)) == 8, again
    assert set(again) == set(every) - set(committed)  # the uncommitted parts' prompts, each once
    assert set(before[4:6]) <= set(again)  # answered, but their part was not committed: asked again
    assert _output(killed) == reference
    rec = read_record(str(killed), "synth")
    assert (rec["parts"], rec["parts_reused"]) == (3, 1)
    assert not list(killed.glob(".synth.tmp-*")) and not (killed / "synth" / "_generated").exists()


@pytest.mark.timeout(3000)  # three stage runs; minutes each on 2 shared cores
def test_other_checks_reuse_the_cache_and_added_prompts_cost_only_their_parts(ray_local, tmp_path, teacher):
    out = tmp_path / "out"
    _dedup_output(out)

    def run(**synth) -> dict:
        config = parse_config(
            {
                "run": {"output": str(out)},
                "ray": {"num_cpus": 2, "object_store_memory_mb": 512, "progress_bars": False},
                "ingest": {"inputs": [{"path": "tests/data/demo", "source": "web/x"}]},
                "synth": _synth(teacher.url, **synth),
            }
        )
        return run_stage(BY_NAME["synth"].implementation(), config, "fp")

    first = run()
    assert len(teacher.sent()) == 12 and first["details"]["generated_now"] == 12
    assert first["parts"] == 3 and "contaminated:humaneval" in first["dropped"]  # checked in the parts
    stricter = run(min_words=600)  # another config: a fresh work directory, the generations from the cache
    assert teacher.sent() == [] and stricter["details"]["from_cache"] == 12
    assert stricter["dropped"]["too_short"] > first["dropped"].get("too_short", 0)
    topics = {"biology": ["photosynthesis", "cell division"], "physics": ["gravity", "friction", "optics"]}
    more = run(topics=topics)  # three prompts more, at the end: a fourth part
    assert len(teacher.sent()) == 3 and more["docs_in"] == 15
    assert (more["details"]["generated_now"], more["details"]["from_cache"]) == (3, 12)
