"""SIGKILL of a real `phicurate run` driver mid-stage, then a rerun: the result equals an uninterrupted run's,
only what was not committed is computed again, and the killed run leaves no process behind (issue 20, item 5;
issue 14, "Done when").

One uninterrupted run of the whole config is the reference. Each case copies the reference's output up to the
stage under test, runs that stage (`phicurate run --stages S`, its own in-process Ray), SIGKILLs the driver
alone (not its process group: the reaper must stop the rest) at a point drawn from the case's seed, waits
for every process of that run to end, reads the commits left in the stage's work directory, and reruns:
- "parts": after k commit records (`_parts/<name>.json`, mix's `_tokenized/_parts/<name>.json`) appeared, k
  drawn from the seed;
- "steps": after k of dedup's step commits (`_steps/<step>.json`), before any of its output parts;
- "commit": once every part is committed, while the runner totals the records and moves the work directory
  into place (if the move and the record came first, the rerun must skip the stage instead).
The rerun's record must count as many reused parts (`parts_reused`) or name the same reused steps
(`details.steps_reused`) as the commits found after the kill, and reproduce every other figure of the
reference's record; every file the stage wrote (mix's shards included) must be byte-identical.

The corpus is small but cut into many parts: ten JSONL files of real sentences (ingest writes its output in
small blocks, and the parts of later stages are the row groups of their upstream's files). The stages take
their parts from the data as a user's run does; no part size is patched.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
import zstandard

from pipeline.runner import read_record
from tests.conftest import DATA, ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(2400),
]  # two real runs a case, the first also the reference

STAGES = ["ingest", "annotate", "select", "dedup", "decontaminate", "mix"]
# counts and figures that an interrupted and resumed run must reproduce exactly
SAME = (
    "docs_in",
    "docs_out",
    "dropped",
    "tokens_out",
    "parts",
    "config_hash",
    "input_fingerprint",
    "details",
)
# (stage, seed, where the kill falls): "parts" after k part commits, "steps" after k of dedup's step commits,
# "commit" once every part is committed
KILLS = [
    ("ingest", 5, "parts"),
    ("annotate", 1, "parts"),
    ("annotate", 0, "commit"),
    ("select", 3, "parts"),  # its commit is annotate's: run_parts' totals and nothing of its own after them
    ("dedup", 7, "steps"),
    ("dedup", 4, "commit"),
    ("decontaminate", 9, "parts"),
    ("decontaminate", 2, "commit"),
    ("mix", 11, "parts"),
    ("mix", 6, "commit"),  # every tokenization task committed: killed while selecting or writing shards
]
# where a stage by part commits its parts, if not in `_parts/`
COMMIT_DIRS = {"mix": "_tokenized/_parts"}
RUN_TIMEOUT_S = 900  # a loaded 2-core machine takes minutes for what takes seconds idle
RAY_START_TIMEOUT = "The current node timed out during startup"
STARTS = 3
ORPHAN_WAIT_S = 30  # the reaper polls every second and gives SIGTERM 3 s before SIGKILL


def _sentences() -> list[str]:
    """Real English sentences: the bundled OneStopEnglish articles, cut at sentence ends."""
    raw = zstandard.ZstdDecompressor().stream_reader(open(DATA / "demo" / "onestopenglish.jsonl.zst", "rb"))
    out = []
    for line in io.TextIOWrapper(raw, encoding="utf-8"):
        for s in re.split(r"(?<=[.!?])\s+", json.loads(line)["text"]):
            if 30 <= len(s) <= 300:
                out.append(s.strip())
    return sorted(set(out))


def _write_corpus(d: Path, files: int = 10, docs: int = 40, seed: int = 0) -> None:
    """`files` JSONL files of `docs` documents each: 3-12 sentences (some 1-2, which select drops), and a few
    near-copies of earlier documents (one word changed)."""
    rng = random.Random(seed)
    pool = _sentences()
    made: list[str] = []
    for f in range(files):
        with open(d / f"web-{f:02d}.jsonl", "w") as fo:
            for i in range(docs):
                if made and rng.random() < 0.1:
                    words = rng.choice(made).split()
                    words[rng.randrange(len(words))] = rng.choice(["indeed", "also", "often"])
                    text = " ".join(words)
                else:
                    text = " ".join(rng.sample(pool, rng.choice([1, 2, *range(3, 13)])))
                made.append(text)
                fo.write(json.dumps({"id": f"doc-{f:02d}-{i:03d}", "text": text}) + "\n")


def _config(root: Path, corpus: Path, out: Path) -> Path:
    web = {"name": "web", "stage": "decontaminate", "weight": 1.0}
    cfg = {
        "run": {"output": str(out)},
        "ray": {"num_cpus": 2, "object_store_memory_mb": 512, "progress_bars": False},
        "ingest": {"inputs": [{"path": str(corpus), "source": "web/kill"}]},
        "annotate": {"workers": 1, "batch_size": 32},
        "select": {"lang": ["en"], "lang_score": 0.5},
        "dedup": {"partitions": 6},  # its output in several files: decontaminate gets several parts
        "decontaminate": {},
        "mix": {
            "tokenizer": "tests/data/tokenizer/phi3",
            "shard_tokens": 4000,  # several shards per phase
            "phase1": {"sources": [web]},
            "phase2": {"sources": [{**web, "where": ["lang_score >= 0.9"]}]},
        },
    }
    p = root / f"{out.name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _cmd(config: Path, stage: str | None) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", str(config), *(["--stages", stage] if stage else [])]


def _start(config: Path, stage: str | None, log) -> subprocess.Popen:
    log.write(f"\n=== {' '.join(_cmd(config, stage))}\n")
    log.flush()
    return subprocess.Popen(
        _cmd(config, stage),
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its session id is the driver's pid: every process it starts can be found
    )


def _ray_did_not_start(log) -> bool:
    """Ray gives its raylet a fixed 30 s to register: on a heavily loaded machine a run may fail to start
    Ray at all, which is no part of what is tested here; such a run is started again."""
    with open(log.name) as f:
        return RAY_START_TIMEOUT in f.read().rsplit("\n=== ", 1)[-1]


def _run(config: Path, log, stage: str | None = None) -> None:
    for _ in range(STARTS):
        proc = _start(config, stage, log)
        try:
            proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
        if proc.returncode == 0 or not _ray_did_not_start(log):
            break
    assert proc.returncode == 0, f"the run failed; see {log.name}"


def _commits(out: Path, stage: str, sub: str | None) -> list[str]:
    """The commit records (`_parts/<part>.json`, dedup's `_steps/<step>.json`) in the stage's work dir."""
    return sorted(p.stem for p in out.glob(f".{stage}.tmp-*/{sub}/*.json")) if sub else []


def _untimed(x):
    """`x` without its timings (keys ending in `_s`, e.g. mix's `tokenize_s`), at any depth."""
    if isinstance(x, dict):
        return {k: _untimed(v) for k, v in x.items() if not k.endswith("_s")}
    return [_untimed(v) for v in x] if isinstance(x, list) else x


def _same(rec: dict) -> dict:
    """What a resumed run must reproduce: the record but its timing and what it reused."""
    same = {k: rec.get(k) for k in SAME}
    same["details"] = _untimed({k: v for k, v in same["details"].items() if k != "steps_reused"})
    return same


def _complete(out: Path, stage: str) -> bool:
    return read_record(str(out), stage) is not None


def _run_killed(config: Path, out: Path, stage: str, sub: str | None, kill_when, log) -> dict:
    """Run `stage` alone, SIGKILL the driver once `kill_when()` is true (or the stage is complete), and
    wait for every process of the run to end. Returns what was found then."""
    proc, starts = _start(config, stage, log), 1
    t0 = time.time()
    # no other work in this loop: on a loaded machine every poll takes long, and a part commits in less
    while not (kill_when() or _complete(out, stage)):
        if proc.poll() is not None:
            if starts < STARTS and _ray_did_not_start(log):
                proc, starts = _start(config, stage, log), starts + 1
                continue
            pytest.fail(f"the run ended (rc {proc.returncode}) before the kill point; see {log.name}")
        if time.time() - t0 > RUN_TIMEOUT_S:
            proc.kill()
            pytest.fail(f"no kill point within {RUN_TIMEOUT_S} s; see {log.name}")
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    at_kill = _commits(out, stage, sub)
    proc.wait()
    left = _wait_for_the_run_to_end(proc.pid)
    return {
        "at_kill": at_kill,
        "committed": _commits(out, stage, sub),  # tasks still running when the driver died may have committed
        "complete": _complete(out, stage),
        "work_dir_left": bool(list(out.glob(f".{stage}.tmp-*"))),
        "orphans": left,
    }


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _of_the_run(sid: int) -> list[psutil.Process]:
    """The processes of the killed driver's run: those still in its session (Ray starts its processes
    without a session of their own) and its reaper (which has one)."""
    found = []
    for p in psutil.process_iter():
        try:
            reaper = p.cmdline()[-2:] == ["pipeline.reaper", str(sid)]
            if reaper or os.getsid(p.pid) == sid:
                found.append(p)
        except (psutil.Error, ProcessLookupError, PermissionError):
            pass
    return found


def _wait_for_the_run_to_end(sid: int) -> list[str]:
    deadline = time.time() + ORPHAN_WAIT_S
    while True:
        left = [p for p in _of_the_run(sid) if _alive(p)]
        if not left or time.time() > deadline:
            break
        time.sleep(0.25)
    names = []
    for p in left:
        try:
            names.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
            p.kill()  # not left running for the other tests; the assertion reports it
        except psutil.NoSuchProcess:
            pass
    return names


def _files(out: Path, stage: str) -> dict[str, bytes]:
    """Every file a stage wrote but its record, by path; the output's own path (manifests name shards by
    absolute path) written as OUT."""
    d = out / stage
    return {
        str(f.relative_to(d)): f.read_bytes().replace(str(out).encode(), b"OUT")
        for f in sorted(d.rglob("*"))
        if f.is_file() and f.name != "_stage.json"
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The corpus and an uninterrupted run of every stage (module-wide: each case copies its output)."""
    root = tmp_path_factory.mktemp("kill")
    corpus = root / "corpus"
    corpus.mkdir()
    _write_corpus(corpus)
    out = root / "ref"
    with open(root / "ref.log", "w") as log:
        _run(_config(root, corpus, out), log)
    for stage in STAGES:
        assert _complete(out, stage), stage
    return root, corpus, out


@pytest.mark.parametrize("stage,seed,where", KILLS, ids=[f"{s}-{w}-{n}" for s, n, w in KILLS])
def test_a_killed_stage_resumes_and_equals_an_uninterrupted_run(reference, stage, seed, where):
    root, corpus, ref = reference
    want = read_record(str(ref), stage)
    assert "parts_reused" in want, f"{stage} does not run by part"
    sub = "_steps" if where == "steps" else COMMIT_DIRS.get(stage, "_parts")
    rng = random.Random(seed)
    out = root / f"{stage}-{where}-{seed}"
    out.mkdir()
    shutil.copy(ref / ".phicurate-output.json", out)
    for s in STAGES[: STAGES.index(stage)]:  # the upstream stages as the reference wrote them
        shutil.copytree(ref / s, out / s)
    cfg = _config(root, corpus, out)

    n = len(want["details"]["steps"]) if where == "steps" else want["parts"]
    assert n >= 3, f"the corpus gives {stage} only {n} commits"
    at = n if where == "commit" else rng.randint(1, n - 1)

    def kill_when():
        return len(_commits(out, stage, sub)) >= at

    log_path = root / f"{out.name}.log"
    with open(log_path, "w") as log:
        killed = _run_killed(cfg, out, stage, sub, kill_when, log)
        assert killed["orphans"] == [], f"processes of the killed run still running: {killed['orphans']}"
        _run(cfg, log, stage)
    why = f"kill point {at}, found {killed}; see {log_path}"

    assert not (killed["complete"] and where != "commit"), f"the stage ended before the kill: {why}"
    got = read_record(str(out), stage)
    assert _same(got) == _same(want), why
    if killed["complete"]:  # the record was written before the kill: the rerun skipped the stage
        assert f"[{stage}] unchanged since the last run" in log_path.read_text(), why
    else:
        if killed["work_dir_left"]:  # else killed after the move, before the record: every part is redone
            assert set(killed["committed"]) >= set(killed["at_kill"]) and len(killed["at_kill"]) >= at, why
        if (
            where == "steps"
        ):  # dedup reuses the committed steps, in order (a step after a missing one is redone)
            assert sorted(got["details"]["steps_reused"]) == killed["committed"], why
        else:
            assert got["parts_reused"] == len(killed["committed"]), why
    assert _files(out, stage) == _files(ref, stage), why
    assert not list(out.glob(f".{stage}.tmp-*")), "the resumed run left its work directory behind"
