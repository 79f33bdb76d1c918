"""Nothing destroyed, nothing leaked (issue 21): output ownership, one run per output, bounded configs,
secrets, no imports from the user's directory, no orphaned Ray processes, clear resource errors.

Each test drives the real path: the runner, a real lock holder in another process, a real HTTP endpoint,
a real in-process Ray started by `init_ray`, a real SIGKILL, a real file size limit."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import ownership, storage
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.runner import read_record, run_pipeline
from pipeline.stages.train.stage import train_command

ROOT = Path(__file__).resolve().parent.parent
DOCS = "tests/data/demo/onestopenglish.jsonl.zst"


def _ingest_config(write_config, output, inputs=DOCS, name="config.yaml"):
    return load_config(
        write_config(
            {"run": {"output": str(output)}, "ingest": {"inputs": [{"path": inputs, "source": "w/x"}]}}, name
        )
    )


# 1. own only what you made


def test_home_directory_and_foreign_directory_are_refused_and_their_files_survive(
    write_config, tmp_path, monkeypatch, ray_local
):
    home = tmp_path / "home"
    (home / "ingest").mkdir(parents=True)
    (home / "ingest" / "sentinel").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(UserError, match="is a home directory"):
        run_pipeline(_ingest_config(write_config, home))
    assert (home / "ingest" / "sentinel").read_text() == "mine"

    foreign = tmp_path / "project"
    (foreign / "ingest").mkdir(parents=True)
    (foreign / "ingest" / "sentinel").write_text("mine")
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="non-empty directory that phicurate did not create"):
        run_pipeline(_ingest_config(write_config, foreign))
    assert (foreign / "ingest" / "sentinel").read_text() == "mine" and not (
        foreign / ownership.MARKER
    ).exists()


def test_roots_are_refused():
    for root in ("/", "s3://bucket", "s3://bucket/"):
        with pytest.raises(UserError, match="root"):
            ownership.check_output(root)


def test_a_stage_directory_phicurate_did_not_write_is_never_replaced(write_config, tmp_path, ray_local):
    """In an output phicurate owns, a directory named like a stage but without a record is somebody's."""
    out = tmp_path / "out"
    config = _ingest_config(write_config, out)
    [rec] = run_pipeline(config)
    assert rec["docs_out"] > 0 and (out / ownership.MARKER).is_file()
    storage.remove_dir(str(out / "ingest"))
    (out / "ingest").mkdir()
    (out / "ingest" / "sentinel").write_text("mine")
    with pytest.raises(UserError, match="was not written by phicurate"):
        run_pipeline(config, force=True)
    assert (out / "ingest" / "sentinel").read_text() == "mine"
    assert not list(out.glob(".ingest.tmp-*"))  # its own work directory is gone, nothing else


def test_output_inside_an_input_is_refused(write_config, tmp_path, ray_local):
    data = tmp_path / "data"
    data.mkdir()
    (data / "docs.jsonl").write_text(json.dumps({"text": "one document"}) + "\n")
    with pytest.raises(UserError, match="is inside the input"):
        run_pipeline(_ingest_config(write_config, data / "out", inputs=str(data)))
    assert not (data / "out").exists()


@pytest.mark.slow  # a subprocess with its own Ray or torch: ~40 s
def test_train_never_removes_a_state_directory_it_did_not_create(write_config, tmp_path):
    from test_train import TRAIN, write_mix

    out = tmp_path / "out"
    write_mix(out)
    shared = tmp_path / "shared-ckpt"
    (shared / "other-run").mkdir(parents=True)
    (shared / "other-run" / "step-9.pt").write_text("another run's checkpoint")
    config = load_config(
        write_config(
            {
                "run": {"output": str(out)},
                "ingest": {"inputs": [{"path": DOCS, "source": "w/x"}]},
                "train": {**TRAIN, "state_dir": str(shared)},
            }
        )
    )
    with pytest.raises(UserError, match="was not created by phicurate's trainer"):
        train_command(config)
    assert (shared / "other-run" / "step-9.pt").read_text() == "another run's checkpoint"


# 2. one run per output


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pipeline import ownership
    with ownership.claim(sys.argv[1]):
        print("HELD", flush=True)
        time.sleep(600)
    """
)


def _hold(output: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(output)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "HELD"
    return proc


def test_second_run_refuses_naming_the_holder_and_a_dead_holder_is_taken_over(
    write_config, tmp_path, ray_local
):
    out = tmp_path / "out"
    holder = _hold(out)
    try:
        config = _ingest_config(write_config, out)
        with pytest.raises(
            UserError,
            match=rf"in use by another phicurate run \(host {socket.gethostname()}, "
            rf"pid {holder.pid}, started ",
        ):
            run_pipeline(config)
        assert not (out / "ingest").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    said = []
    [rec] = run_pipeline(config, log=said.append)
    assert rec["docs_out"] > 0
    assert any(
        f"took over the lock of a dead run on {out}" in s and f"pid {holder.pid}" in s for s in said
    ), said
    assert not (out / ownership.LOCK).exists()  # released at the end


def test_object_store_lock_refuses_then_takes_over_dead_and_expired_holders(s3_bucket):
    out = f"{s3_bucket}/run"
    said = []
    first = ownership.OutputLock(out).acquire()
    with pytest.raises(
        UserError, match=rf"in use by another phicurate run \(host {socket.gethostname()}, pid {os.getpid()}"
    ):
        ownership.OutputLock(out).acquire()
    assert not ownership.OutputLock(
        out
    )._create_remote()  # the conditional write itself refuses a second lock
    first.release()
    assert not storage.exists(f"{out}/{ownership.LOCK}")

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = time.time()
    stale = {
        "host": socket.gethostname(),
        "pid": dead.pid,
        "start": "then",
        "start_ts": now,
        "heartbeat_ts": now,
        "token": "x",
    }
    storage.write_json(f"{out}/{ownership.LOCK}", stale)
    lock = ownership.OutputLock(out, log=said.append).acquire()
    assert f"pid {dead.pid} no longer runs" in said[-1]
    lock.release()

    far = {**stale, "host": "another-host", "pid": 1, "heartbeat_ts": now - 3600}
    storage.write_json(f"{out}/{ownership.LOCK}", far)
    lock = ownership.OutputLock(out, log=said.append).acquire()
    assert "host another-host" in said[-1] and re.search(r"heartbeat is 36\d\d s old", said[-1])
    with pytest.raises(UserError, match="in use by another phicurate run"):  # a live heartbeat is not stale
        ownership.OutputLock(out).acquire()
    lock.release()


def test_two_runs_taking_over_one_dead_lock_on_s3_exactly_one_wins(s3_bucket):
    """Both read the dead run's lock; each takes it over with a write conditional on the ETag it read
    (If-Match): the second write fails, so the second run refuses instead of both holding the output. A
    run whose lock was taken over does not delete the new holder's lock when it ends."""
    out = f"{s3_bucket}/run"
    uri = f"{out}/{ownership.LOCK}"
    dead = {"host": "another-host", "pid": 1, "start": "then", "start_ts": 0.0, "token": "x"}
    storage.write_json(uri, {**dead, "heartbeat_ts": time.time() - 3600})
    a, b = ownership.OutputLock(out), ownership.OutputLock(out)
    (seen_a, etag_a), (seen_b, etag_b) = a._read_remote(), b._read_remote()
    assert seen_a == seen_b and seen_a["token"] == "x" and etag_a == etag_b
    assert a._put_remote(if_match=etag_a)
    assert not b._put_remote(if_match=etag_b)
    assert storage.read_json(uri)["token"] == a.info["token"]
    with pytest.raises(UserError, match="in use by another phicurate run"):
        b.acquire()

    c = ownership.OutputLock(out)  # a's heartbeat lapsed and a later run took its lock over
    assert c._put_remote(if_match=a._etag)
    a.release()
    assert storage.read_json(uri)["token"] == c.info["token"]
    c.release()
    assert not storage.exists(uri)


# 3. bounded configs


def test_alias_bomb_is_refused_in_under_a_second(tmp_path):
    levels = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 6)]
    bomb = "\n".join(
        [
            "run: {output: out/bomb}",
            f"ingest: {{inputs: [{{path: {DOCS}, source: w/x}}]}}",
            "synth:",
            "  topics: {biology: [cells]}",
            "  backend:",
            "    model: tiny-phi3",
            "    vllm:",
            "      engine_kwargs:",
            *["        " + line for line in levels],
        ]
    )
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb)
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=r"aliases expand to more than 100000 values"):
        load_config(path)
    took = time.perf_counter() - t0
    print(f"alias bomb of {path.stat().st_size} bytes refused in {took * 1000:.1f} ms")
    assert took < 1.0

    path.write_text("run: {name: x}\n" + "#" * (1 << 20))
    with pytest.raises(UserError, match=r"a config may have at most 1048576 bytes"):
        load_config(path)
    path.write_text("x: &x 1\ny: [" + ",".join(["*x"] * 1001) + "]\n")
    with pytest.raises(UserError, match=r"1001 YAML aliases; a config may have at most 1000"):
        load_config(path)


# 4. secrets stay secret


CANARY = "sk-canary-7f3a91c2e5d84b06"


class _EchoKey(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that fails with the caller's key quoted in the error body."""

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps(
            {"error": {"message": f"internal error for key {self.headers.get('Authorization')}"}}
        )
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.mark.slow  # a subprocess with its own Ray or torch: ~40 s
def test_canary_key_echoed_by_the_endpoint_is_in_no_file_of_the_output(write_config, tmp_path, ray_tmp):
    """`phicurate run` and `phicurate report` as a user runs them, the key exported in the environment (so
    the in-process Ray's workers, which send the requests, have it); the endpoint quotes it in every 500."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoKey)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "out"
    (out / "dedup").mkdir(parents=True)
    web = [
        {
            "id": "w1",
            "text": "Plants make sugar from light. " * 20,
            "source": "web/x",
            "url": None,
            "meta": "{}",
        }
    ]
    pq.write_table(pa.Table.from_pylist(web), out / "dedup" / "part-0.parquet")
    storage.write_json(
        str(out / "dedup" / "_stage.json"),
        {
            "stage": "dedup",
            "status": "complete",
            "config_hash": "h",
            "input_fingerprint": "f",
            "docs_in": 1,
            "docs_out": 1,
            "dropped": {},
            "tokens_out": 120,
            "wall_s": 0.0,
            "details": {},
        },
    )
    port = server.server_address[1]
    path = write_config(
        {
            "run": {"output": str(out)},
            "ingest": {"inputs": [{"path": DOCS, "source": "w/x"}]},
            "synth": {
                "topics": {"biology": ["photosynthesis"]},
                "web_seeds": {"count": 0},
                "dedup": None,  # the failed generations' records are then the output (dedup only copies them)
                "backend": {
                    "kind": "openai",
                    "model": "served",
                    "openai": {
                        "base_url": f"http://127.0.0.1:{port}/v1",
                        "api_key_env": "PHICURATE_TEST_KEY",
                        "max_retries": 0,
                        "timeout_s": 10,
                    },
                },
            },
        }
    )
    env = {**_env(), "PHICURATE_TEST_KEY": CANARY, "RAY_TMPDIR": str(ray_tmp)}
    try:
        ran = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", str(path), "--stages", "synth"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        report = subprocess.run(
            [sys.executable, "-m", "pipeline", "report", str(out)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.shutdown()
    assert ran.returncode == 0 and report.returncode == 0, (ran.stderr + report.stderr)[-3000:]
    rec = json.loads((out / "synth" / "_stage.json").read_text())
    assert (
        rec["dropped"].get("generation_failed") == rec["docs_in"] > 0
    )  # the endpoint was reached and failed
    detail = pa.concat_tables([pq.read_table(p) for p in (out / "synth" / "dropped").glob("*.parquet")])
    details = detail["drop_detail"].to_pylist()
    assert all("key Bearer [redacted:PHICURATE_TEST_KEY]" in d for d in details), details[:3]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert (out / "report.html").is_file() and len(files) > 5
    assert not [str(p) for p in files if CANARY.encode() in p.read_bytes()]
    assert CANARY not in ran.stdout + ran.stderr + report.stdout + report.stderr
    assert _files_holding(ray_tmp, CANARY) == []  # Ray's own session logs


@pytest.fixture
def ray_tmp():
    """A Ray temp directory of its own, with a short path (Ray's socket paths must stay under 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="phc-ray-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _files_holding(root: Path, text: str) -> list[str]:
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    assert files, f"nothing under {root}"
    return [str(p.relative_to(root)) for p in files if text.encode() in p.read_bytes()]


LEAKY_WORKER = textwrap.dedent(
    """
    import logging, os, sys
    import ray
    import ray.data
    from pipeline import redact
    from pipeline.config import RayConfig
    from pipeline.runtime import init_ray

    names = tuple(sys.argv[1:])
    init_ray(RayConfig(num_cpus=1, object_store_memory_mb=128, progress_bars=False), names)

    @ray.remote
    def call_endpoint():  # what a client library does when an endpoint's error quotes the key
        key = os.environ["PHICURATE_TEST_KEY"]
        log = logging.getLogger("openai")
        log.error("endpoint refused key %s", key)
        print(f"retrying with {key}", flush=True)
        print(f"warning: {key} rejected", file=sys.stderr, flush=True)
        try:
            raise ValueError(f"401 for key {key}")
        except ValueError:
            log.exception("request failed")
        raise RuntimeError(f"gave up with key {key}")

    def failing_batch(batch):
        raise RuntimeError("bad key " + os.environ["PHICURATE_TEST_KEY"])

    # the driver side of a run: every log record is redacted, as run_pipeline does
    with redact.redacted_records({os.environ["PHICURATE_TEST_KEY"]: "[redacted]"} if names else {}):
        for run in (lambda: ray.get(call_endpoint.remote()), lambda: ray.data.range(2).map_batches(
            failing_batch).materialize()):
            try:
                run()
            except Exception as e:
                print("FAILED AS EXPECTED", type(e).__name__, flush=True)
    ray.shutdown()
    """
)


@pytest.mark.slow  # a subprocess with its own Ray: ~40 s
def test_a_worker_logging_the_key_leaves_it_in_no_ray_log_file(ray_tmp):
    """A Ray worker that logs, prints and raises the key: Ray keeps its stdout and stderr in the session's
    `worker-*.out/.err` and the driver's Ray Data log in `ray-data.log`; none of them holds the key when
    the secret's name is given to init_ray (as run_pipeline does). Without it, they do."""
    leaks = {}
    for names in ((), ("PHICURATE_TEST_KEY",)):
        tmp = ray_tmp / f"r{len(names)}"
        env = {**_env(), "PHICURATE_TEST_KEY": CANARY, "RAY_TMPDIR": str(tmp)}
        done = subprocess.run(
            [sys.executable, "-c", LEAKY_WORKER, *names],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0 and done.stdout.count("FAILED AS EXPECTED") == 2, done.stderr[-3000:]
        leaks[names] = (_files_holding(tmp, CANARY), CANARY in done.stdout + done.stderr)
    unguarded, guarded = leaks[()], leaks[("PHICURATE_TEST_KEY",)]
    assert any(f.endswith(".err") for f in unguarded[0]) and unguarded[1], unguarded  # the test can fail
    assert guarded == ([], False), guarded


# 5. no surprise code


DRIVER = textwrap.dedent(
    """
    import os, sys
    import ray
    from pipeline.config import RayConfig
    from pipeline.runtime import init_ray

    init_ray(RayConfig(num_cpus=1, object_store_memory_mb=128, progress_bars=False))

    @ray.remote
    def where():
        import colorsys
        return colorsys.__file__

    print("WORKER", ray.get(where.remote()), flush=True)
    if len(sys.argv) > 1:
        print("READY", flush=True)
        import time
        time.sleep(600)
    """
)


def _driver(tmp_path: Path, shadow: bool = True) -> tuple[Path, Path]:
    """A driver script in its own directory (like the `phicurate` console script) and a working directory
    holding a module that shadows the standard library's `colorsys` (not imported by Ray itself, so a worker
    imports it on the task's request)."""
    bin_dir, cwd = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir()
    cwd.mkdir()
    (bin_dir / "drive.py").write_text(DRIVER)
    if shadow:
        (cwd / "colorsys.py").write_text("raise ImportError('the user directory colorsys.py was imported')\n")
    return bin_dir / "drive.py", cwd


def _env() -> dict:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow  # a subprocess with its own Ray or torch: ~40 s
def test_workers_do_not_import_modules_from_the_working_directory(tmp_path):
    script, cwd = _driver(tmp_path)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [x for x in done.stdout.splitlines() if x.startswith("WORKER ")]
    assert line.split(" ", 1)[1].startswith(os.path.dirname(os.__file__)), line


# 6. clean exits


@pytest.mark.slow  # a subprocess with its own Ray or torch: ~40 s
def test_sigkilled_driver_leaves_no_ray_process_behind(tmp_path):
    script, cwd = _driver(tmp_path, shadow=False)
    err = open(tmp_path / "stderr.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, str(script), "wait"],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
    )
    try:
        for line in proc.stdout:
            if line.startswith("READY"):
                break
        assert proc.poll() is None, open(tmp_path / "stderr.log").read()[-3000:]
        time.sleep(2)  # the watcher notes the processes once a second
        ray_procs = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if "reaper" not in " ".join(p.cmdline())
        ]
        assert len(ray_procs) >= 3  # gcs, raylet, agents, a worker
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _, alive = psutil.wait_procs(ray_procs, timeout=20)
        leftovers = [f"{p.pid} {p.name()}" for p in alive]
        for p in alive:  # do not leave them to the other tests
            p.kill()
        assert not leftovers
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.time() + 10
    while time.time() < deadline and "leftover process" not in (tmp_path / "stderr.log").read_text():
        time.sleep(0.2)
    assert "ended without stopping its Ray; stopped" in (tmp_path / "stderr.log").read_text()


TRAIN_UNDER_LIMIT = textwrap.dedent(
    """
    import resource, signal, sys
    from pipeline.config import load_config
    from pipeline.errors import UserError
    from pipeline.stages.train.stage import train_command

    config = load_config(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
    try:
        train_command(config)
    except UserError as e:
        print("USERERROR", e, flush=True)
    """
)


@pytest.mark.slow  # a subprocess with its own Ray or torch: ~40 s
def test_file_size_limit_in_train_names_the_stage_the_path_and_the_cause(write_config, tmp_path):
    from test_train import TRAIN, write_mix

    out = tmp_path / "out"
    write_mix(out)
    path = write_config(
        {"run": {"output": str(out)}, "ingest": {"inputs": [{"path": DOCS, "source": "w/x"}]}, "train": TRAIN}
    )
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_UNDER_LIMIT, str(path)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    [line] = [x for x in done.stdout.splitlines() if x.startswith("USERERROR")] or [done.stderr[-3000:]]
    assert "stage 'train': a file size limit was reached" in line, line
    assert str(out) in line, line


@pytest.mark.slow  # two short training runs: ~1 min
def test_a_shared_state_directory_keeps_the_other_runs_checkpoints(write_config, tmp_path):
    """Two outputs pointing train.state_dir at one folder: the second run's fresh start refuses to clear the
    first run's checkpoints (the trainer's marker names the run it belongs to)."""
    from test_train import TRAIN, write_mix

    shared = tmp_path / "shared-ckpt"
    configs = []
    for name in ("a", "b"):
        out = tmp_path / name
        write_mix(out)
        cfg = {
            "run": {"output": str(out)},
            "ingest": {"inputs": [{"path": DOCS, "source": "w/x"}]},
            "train": {**TRAIN, "state_dir": str(shared)},
        }
        configs.append(load_config(write_config(cfg, name=f"{name}.yaml")))
    train_command(configs[0])
    before = sorted(p.relative_to(shared) for p in shared.rglob("*"))
    with pytest.raises(UserError, match="holds the training state of another run"):
        train_command(configs[1])
    assert sorted(p.relative_to(shared) for p in shared.rglob("*")) == before
    train_command(configs[0])  # the run it belongs to starts afresh over it, as before


@pytest.fixture
def small_disk(tmp_path, request):
    """A 6 MiB tmpfs (or the size a test gives as the fixture's parameter): a disk that really fills
    (mounting needs root with CAP_SYS_ADMIN, as in CI's container; where it is not allowed, these tests skip
    and the file size limit test above covers the mapping)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    size = getattr(request, "param", "6m")
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)]
    done = subprocess.run(mount, capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """A ballast file that leaves `leave` bytes free on `disk`."""
    st = os.statvfs(disk)
    ballast = disk / "ballast"
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return ballast


def test_disk_full_in_a_stage_by_part_names_it_and_a_rerun_after_freeing_space_reuses_its_parts(
    small_disk, write_config, tmp_path, ray_local
):
    """annotate (one actor: parts one after another) on a disk with room for about three of its eight
    parts: the run fails naming the stage, the output and the cause; after the space is freed, the rerun
    completes and reuses the parts committed before the disk filled."""
    from pipeline import parts
    from tests.test_signals import _onestopenglish

    texts = _onestopenglish(80)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(8):
        rows = [{"id": f"f{i}-{j}", "text": t} for j, t in enumerate(texts[i * 10 : i * 10 + 10])]
        (corpus / f"docs{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = small_disk / "out"
    cfg = {
        "run": {"output": str(out)},
        "ingest": {"inputs": [{"path": str(corpus), "source": "web/test"}]},
        "annotate": {"workers": 1, "batch_size": 16},
    }
    config = load_config(write_config(cfg))
    [ingest] = run_pipeline(config, stages=["ingest"], log=lambda m: None)
    todo = parts.upstream_parts(str(out / "ingest"))
    assert len(todo) >= 4, todo  # enough parts that some commit before the disk fills
    sizes = sorted(os.path.getsize(p.spec["file"]) for p in todo)
    ballast = _fill(small_disk, leave=3 * (2 * sizes[-1] + 8192))  # kept file with signals + commit page
    with pytest.raises(UserError) as e:
        run_pipeline(config, log=lambda m: None)
    msg = str(e.value)
    assert re.match(rf"stage 'annotate': no space left on the device (writing|under) {out}", msg), msg
    assert read_record(str(out), "annotate") is None
    [work] = out.glob(".annotate.tmp-*")
    committed = len(list((work / parts.COMMITS).glob("*.json")))
    assert 0 < committed < len(todo), committed

    ballast.unlink()
    recs = run_pipeline(config, log=lambda m: None)
    ann = next(r for r in recs if r["stage"] == "annotate")
    assert ann["parts"] == len(todo) and ann["parts_reused"] == committed
    assert ann["docs_in"] == ann["docs_out"] == ingest["docs_out"]


@pytest.mark.slow  # a short training run: ~1 min
# room for the whole run once the ballast is gone: the mix, the kept checkpoints (each a Hugging Face model
# directory with the tokenizer) and the final model
@pytest.mark.parametrize("small_disk", ["512m"], indirect=True)  # a whole run took 305 MB
def test_disk_full_in_train_names_the_stage_the_path_and_the_cause_and_a_rerun_completes(
    small_disk, write_config, tmp_path
):
    """train's checkpoint writer (torch) says only "unexpected pos"; the runner finds the full disk."""
    from test_train import TRAIN, write_mix

    out = small_disk / "out"
    write_mix(out)
    path = write_config(
        {"run": {"output": str(out)}, "ingest": {"inputs": [{"path": DOCS, "source": "w/x"}]}, "train": TRAIN}
    )
    config = load_config(path)
    ballast = _fill(small_disk, leave=256 * 1024)
    with pytest.raises(UserError) as e:
        train_command(config)
    msg = str(e.value)
    assert re.match(rf"stage 'train': no space left on the device (writing|under) {out}", msg), msg
    assert read_record(str(out), "train") is None
    ballast.unlink()
    rec = train_command(config)
    assert rec["status"] == "complete"


@pytest.mark.slow  # a subprocess with its own Ray: ~1 min
def test_a_worker_out_of_memory_names_the_stage_and_the_cause(write_config, tmp_path):
    """`phicurate run` of annotate on one 200 MB document, each worker capped by ray.worker_memory_mb at
    2 GiB (RLIMIT_DATA, so the machine itself never runs short): the stage fails with a user error that
    names it, the output and the cause, not with a worker's traceback or the kernel's OOM killer."""
    out = tmp_path / "out"
    (out / "ingest").mkdir(parents=True)
    text = "Plants make sugar from light and water. " * (200 * 2**20 // 40)
    row = {"id": "big", "text": text, "source": "web/x", "url": None, "meta": "{}"}
    pq.write_table(pa.Table.from_pylist([row]), out / "ingest" / "part-0.parquet")
    del text, row
    record = {"stage": "ingest", "status": "complete", "config_hash": "h", "input_fingerprint": "f"}
    record |= {"docs_in": 1, "docs_out": 1, "dropped": {}, "tokens_out": 1, "wall_s": 0.0, "details": {}}
    storage.write_json(str(out / "ingest" / "_stage.json"), record)
    ray_cfg = {"num_cpus": 2, "object_store_memory_mb": 256, "progress_bars": False, "worker_memory_mb": 2048}
    path = write_config(
        {
            "run": {"output": str(out)},
            "ray": ray_cfg,
            "ingest": {"inputs": [{"path": DOCS, "source": "w/x"}]},
            "annotate": {"workers": 1, "batch_size": 1},
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(path), "--stages", "annotate"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    said = done.stdout + done.stderr
    assert done.returncode == 2, said[-3000:]
    assert re.search(
        rf"stage 'annotate': memory ran out in a worker \(writing under {out}\): \w*MemoryError", said
    )
    assert "raise ray.worker_memory_mb" in said
    assert read_record(str(out), "annotate") is None
