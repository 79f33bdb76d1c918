"""Runs stages in order on Ray, writes each stage atomically with its `_stage.json`, and skips unchanged
stages.

A stage directory counts as complete only when its `_stage.json` says so. The stage writes into a
temporary directory that is moved into place when everything is written, and the record is written
last, so a run killed at any point leaves nothing that looks complete.

Before anything runs, the output is checked and locked (pipeline/ownership.py): phicurate writes and deletes
only inside an output it owns, one run at a time. Secret values the config names are scrubbed from every
document, record, log line and error (pipeline/redact.py). A stage that fails because the disk is full, a
file size limit or memory ran out says so, with the stage and the path (`resource_error`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import time
import uuid
from typing import Callable

import pyarrow.fs as pafs
import ray

from pipeline import ownership, parts, redact, storage
from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.fingerprint import outside_files
from pipeline.registry import BY_NAME, ORDER
from pipeline.runtime import init_ray
from pipeline.stage import Stage, StageContext, StageOutput

logger = logging.getLogger(__name__)

RECORD = ownership.RECORD
# errnos that mean "the machine ran out", not "phicurate or the input is wrong"
RESOURCE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "a file size limit was reached"}
if hasattr(errno, "EDQUOT"):
    RESOURCE_ERRNOS[errno.EDQUOT] = "the disk quota is exhausted"
PROBE_BYTES = 1 << 20  # written where a stage failed, to tell a full disk from another error
# Rows per block when a stage reads its input, so one large part still spreads over every core.
READ_BLOCK_ROWS = 512


def stage_dir(output: str, stage: str) -> str:
    return storage.join(output, stage)


def read_record(output: str, stage: str) -> dict | None:
    rec = storage.read_json(storage.join(output, stage, RECORD))
    return rec if rec and rec.get("status") == "complete" else None


def read_docs(output: str, stage: str) -> "ray.data.Dataset":
    """Kept documents of a complete stage (its top-level Parquet parts, not `dropped/`)."""
    files = storage.list_files(stage_dir(output, stage), suffix=".parquet")
    if not files:
        raise UserError(f"{stage_dir(output, stage)}: no Parquet parts; rerun stage '{stage}' with --force")
    return ray.data.read_parquet(files).repartition(target_num_rows_per_block=READ_BLOCK_ROWS)


def input_fingerprint(stage: Stage, config: Config, output: str) -> str:
    """What the stage reads: upstream records (config, input, counts) and any outside files."""
    parts: dict = {}
    for up in BY_NAME[stage.name].inputs(config):
        rec = read_record(output, up)
        if rec is None:
            raise UserError(
                f"stage '{stage.name}' reads the output of '{up}', which is not complete in {output}; "
                f"run it first (phicurate run CONFIG --stages {up})"
            )
        parts[up] = {k: rec[k] for k in ("config_hash", "input_fingerprint", "docs_out")}
    if stage.outside_files is not None:
        parts["external"] = outside_files(stage.outside_files(config))
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def work_dir_of(output: str, stage: str, config_hash: str, fingerprint: str) -> str:
    """Where a stage writes until it is complete: named after its config and input, so the rerun of a
    killed run finds what the killed one committed, and a run with another config or input does not."""
    key = hashlib.sha256(f"{config_hash}:{fingerprint}".encode()).hexdigest()[:12]
    return storage.join(output, f".{stage}.tmp-{key}")


def _remove_stale_work_dirs(output: str, stage: str, keep: str | None) -> None:
    """Work directories of earlier, killed runs of this stage (never complete, never read), except `keep`,
    the one this run resumes."""
    fs, path = storage.resolve(output)
    _, keep_path = storage.resolve(keep) if keep else (None, None)
    for info in fs.get_file_info(pafs.FileSelector(path)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith(f".{stage}.tmp-"):
            if info.path.rstrip("/") != (keep_path or "").rstrip("/"):
                fs.delete_dir(info.path)


def _causes(e: BaseException):
    """`e` and what caused it, through Ray's task errors (whose `cause` is the worker's exception)."""
    seen = set()
    todo = [e]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__context__, e.__cause__, getattr(e, "cause", None)]


def _brief(e: BaseException) -> str:
    """An error in a line or two: some (torch's CheckpointException) carry whole tracebacks."""
    lines = [x for x in f"{type(e).__name__}: {e}".splitlines() if x.strip()]
    return lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1].strip()}"


# the last line of a worker's traceback when an allocation failed (MemoryError, pyarrow's ArrowMemoryError)
_MEMORY_LINE = re.compile(r"^\s*((?:\w+\.)*\w*MemoryError\b.*)$", re.M)


def _memory_error(x: BaseException) -> str | None:
    """The MemoryError in `x`, if it is one: a task's error reaches the driver as a RayTaskError whose
    cause chain was not pickled, only the worker's traceback, as text in its message."""
    if isinstance(x, MemoryError) and not isinstance(x, ray.exceptions.RayError):
        return _brief(x)
    found = _MEMORY_LINE.findall(str(x)) if isinstance(x, ray.exceptions.RayTaskError) else []
    return found[-1].strip() if found else None


def resource_error(
    stage: str, where: str, e: BaseException, probe_dir: str | None = None
) -> UserError | None:
    """A UserError naming the stage, the path and the cause if `e` came from running out of disk, file size
    or memory; None for any other error.

    Not every library says so (torch's checkpoint writer reports a full disk as "unexpected pos 704 vs
    598"), so when the error does not, a small file is written where the stage writes: if that fails with
    a resource errno, that is the cause."""
    for x in _causes(e):
        if isinstance(x, OSError) and x.errno in RESOURCE_ERRNOS:
            path = x.filename or where
            return UserError(f"stage '{stage}': {RESOURCE_ERRNOS[x.errno]} writing {path} ({_brief(x)})")
        if type(x).__name__ == "OutOfMemoryError" and type(x).__module__.startswith("ray"):
            return UserError(
                f"stage '{stage}': a Ray worker ran out of memory (writing under {where}); give the "
                f"stage fewer parallel tasks or more memory. Ray said: {str(x)[:2000]}"
            )
        memory = _memory_error(x)
        if memory is not None:  # a worker past ray.worker_memory_mb, or a failed allocation on the driver
            return UserError(
                f"stage '{stage}': memory ran out in a worker (writing under {where}): {memory[:500]}; "
                "raise ray.worker_memory_mb or give the stage smaller batches or fewer parallel tasks"
            )
    probe_dir = probe_dir or where
    if "://" in probe_dir or not os.path.isdir(probe_dir):
        return None
    probe = os.path.join(probe_dir, f".phicurate-probe-{uuid.uuid4().hex[:8]}")
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as p:
        if p.errno in RESOURCE_ERRNOS:
            return UserError(
                f"stage '{stage}': {RESOURCE_ERRNOS[p.errno]} under {where} ({p.strerror}, found by writing "
                f"{PROBE_BYTES} bytes into {probe_dir}); the stage failed with: {_brief(e)[:1000]}"
            )
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    return None


def run_stage(stage: Stage, config: Config, fingerprint: str) -> dict:
    """Run one stage into a work directory and move it into place with its record (the output claimed and
    locked for the duration, unless the caller holds it already)."""
    output = config.run.output
    secrets = redact.secret_values(config)
    with ownership.claim(output, ownership.config_inputs(config)):
        try:
            return _run_stage(stage, config, fingerprint, secrets)
        except Exception as e:
            redact.redact_exception(e, secrets)
            raise


def _run_stage(stage: Stage, config: Config, fingerprint: str, secrets: dict[str, str]) -> dict:
    output = config.run.output
    final = stage_dir(output, stage.name)
    if storage.exists(final) and not storage.exists(storage.join(final, RECORD)):
        raise UserError(  # checked before the stage runs; storage.replace_dir checks again
            f"{final} exists but was not written by phicurate (it has no {RECORD}); it is not deleted: move "
            "it away or give another output"
        )
    work_dir = work_dir_of(output, stage.name, config.section_hash(stage.name), fingerprint)
    _remove_stale_work_dirs(output, stage.name, keep=work_dir if stage.resumes else None)
    storage.make_dir(work_dir)
    # the stage directory holds a record from the moment it exists: only such a directory is ever replaced
    storage.write_json(storage.join(work_dir, RECORD), {"stage": stage.name, "status": "writing"})
    t0 = time.time()
    ctx = StageContext(stage.name, config, output, work_dir, lambda up: read_docs(output, up), secrets)
    parts_figures: dict = {}
    try:
        result: StageOutput = stage.run(ctx)
        written = result.parts
        if result.docs is not None:
            written = parts.write_dataset(result.docs, work_dir, secrets)
        if written is not None:
            docs_out, dropped, words = written.docs_out, written.dropped, written.words
            docs_in = result.docs_in if result.docs_in is not None else _docs_read(stage.name, config)
            if docs_in is None:  # several upstream stages (none such today): what the tasks read
                docs_in = written.docs_in
            elif result.docs_in is None and result.parts is not None and written.docs_in != docs_in:
                storage.remove_dir(work_dir)  # its committed parts are not to be trusted by a rerun
                raise RuntimeError(
                    f"stage {stage.name}: its parts read {written.docs_in} documents, but the upstream "
                    f"stage kept {docs_in} (its work directory is removed: a rerun computes every part)"
                )
            tokens = result.tokens_out if result.tokens_out is not None else words
            if result.parts is not None:
                parts_figures = {"parts": written.parts, "parts_reused": written.parts_reused}
        else:
            docs_out, dropped, tokens = result.docs_out, result.dropped or {}, result.tokens_out or 0
            docs_in = result.docs_in
    except (KeyboardInterrupt, SystemExit, UserError):
        raise
    except BaseException as e:  # torch's CheckpointException is a BaseException
        diagnosed = resource_error(stage.name, output, e, work_dir)
        if diagnosed is not None:
            raise diagnosed from e
        raise
    if docs_in != docs_out + sum(dropped.values()):
        storage.remove_dir(work_dir)  # nor what a stage that loses documents committed
        raise RuntimeError(
            f"stage {stage.name} lost documents: in {docs_in}, out {docs_out}, dropped {dropped}"
        )
    storage.replace_dir(work_dir, final)
    record = {
        "stage": stage.name,
        "status": "complete",
        "config_hash": config.section_hash(stage.name),
        "input_fingerprint": fingerprint,
        "docs_in": docs_in,
        "docs_out": docs_out,
        "dropped": dropped,
        "tokens_out": tokens,
        "wall_s": round(time.time() - t0, 2),
        **parts_figures,
        "details": result.details,
    }
    record = redact.redact_obj(record, secrets)
    storage.write_json(storage.join(final, RECORD), record)
    return record


def _docs_read(name: str, config: Config) -> int | None:
    """What a stage read, counted where it was written (the upstream record), never from this stage's own
    output: a stage that loses documents then fails the identity check below instead of passing it."""
    spec = BY_NAME.get(name)
    ups = spec.inputs(config) if spec is not None else ()
    if len(ups) != 1:
        return None
    rec = read_record(config.run.output, ups[0])
    return rec["docs_out"] if rec is not None else None


def run_pipeline(
    config: Config,
    stages: list[str] | None = None,
    force: bool = False,
    log: Callable[[str], None] = logger.info,
) -> list[dict]:
    """Run the selected stages (default: the config's) in pipeline order; return their records."""
    selected = stages or config.stages()
    unknown = [s for s in selected if s not in ORDER]
    if unknown:
        raise UserError(f"--stages: unknown stage(s) {unknown}; stages are {', '.join(ORDER)}")
    for s in selected:
        if getattr(config, s, None) is None:
            raise UserError(f"--stages names '{s}' but the config has no '{s}' section")
    secrets = redact.secret_values(config)
    if secrets:
        log = _redacting(log, secrets)
    with contextlib.ExitStack() as stack:
        stack.enter_context(ownership.claim(config.run.output, ownership.config_inputs(config), log))
        if secrets:
            stack.enter_context(_redacted_logging(secrets))
            stack.enter_context(redact.redacted_records(secrets))
        try:
            init_ray(config.ray, tuple(redact.secret_env_names(config)))
            return _run_stages(config, selected, force, log)
        except Exception as e:
            redact.redact_exception(e, secrets)
            raise


def _redacting(log: Callable[[str], None], secrets: dict[str, str]) -> Callable[[str], None]:
    return lambda msg: log(redact.redact_text(msg, secrets))


@contextlib.contextmanager
def _redacted_logging(secrets: dict[str, str]):
    """Every handler of the root logger drops the secrets from its lines for the duration of a run."""
    flt = redact.RedactingFilter(secrets)
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(flt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(flt)


def _run_stages(config: Config, selected: list[str], force: bool, log: Callable[[str], None]) -> list[dict]:
    records = []
    for name in [s for s in ORDER if s in selected]:
        stage = BY_NAME[name].implementation()
        fingerprint = input_fingerprint(stage, config, config.run.output)
        old = read_record(config.run.output, name)
        if (
            not force
            and old is not None
            and old["config_hash"] == config.section_hash(name)
            and old["input_fingerprint"] == fingerprint
        ):
            log(f"[{name}] unchanged since the last run: skipped ({old['docs_out']} docs)")
            records.append({**old, "skipped": True})
            continue
        log(f"[{name}] running")
        empty = [
            up for up in BY_NAME[name].inputs(config) if read_record(config.run.output, up)["docs_out"] == 0
        ]
        if empty:  # a normal outcome (strict rules, an empty input): the stage completes with an empty part
            log(f"[{name}] {' and '.join(empty)} kept no documents: {name} runs on an empty input")
        rec = run_stage(stage, config, fingerprint)
        log(
            f"[{name}] done in {rec['wall_s']:.1f}s: {rec['docs_in']} in, {rec['docs_out']} kept, "
            f"dropped {rec['dropped'] or 'none'}"
        )
        records.append(rec)
    return records
