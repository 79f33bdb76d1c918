"""What an output directory may be, who owns it, and one run at a time on it.

phicurate deletes things inside its output (a stage directory it rewrites, work directories of killed runs),
so it must be sure the output is its own: the first run writes a marker file (`.phicurate-output.json`)
into an empty or new output, and later runs refuse a non-empty directory without it, a filesystem or bucket
root, a home directory and an output inside an input. A lock file (`.phicurate-lock.json`) names the run
that holds the output (host, pid, start); a second run refuses with that name. The lock of a run that died
is recognised and taken over, with a message saying so. See docs/safety.md.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import glob
import json
import logging
import os
import pwd
import socket
import threading
import time
import uuid
from typing import Callable, Iterator

import pyarrow.fs as pafs

from pipeline import storage
from pipeline.errors import UserError

logger = logging.getLogger(__name__)

MARKER = ".phicurate-output.json"
LOCK = ".phicurate-lock.json"
RECORD = "_stage.json"
# Entries phicurate itself makes at the top of an output: an output written before the marker existed, made of
# these only, is adopted (the marker is added); anything else makes a directory somebody else's.
KNOWN_ENTRIES = (".train-state", "synth_cache", "report", "report.html", "tune", "ablate")
HEARTBEAT_S = 30.0  # an object-store lock is rewritten this often while its run lives
STALE_AFTER_S = 10 * HEARTBEAT_S  # ... and is stale when its heartbeat is older than this


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> str:
    return os.path.realpath(uri.removeprefix("file://"))


def _home_dirs() -> set[str]:
    homes = {os.path.realpath(os.path.expanduser("~"))}
    try:
        homes |= {os.path.realpath(p.pw_dir) for p in pwd.getpwall() if p.pw_dir not in ("", "/")}
    except OSError:
        pass
    return homes


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _input_roots(inputs: list[str]) -> list[str]:
    """The directory each input path (file, directory or glob) reads below."""
    roots = []
    for p in inputs:
        if not _is_local(p):
            roots.append(p.rstrip("/"))
            continue
        base = p
        if glob.has_magic(p):  # the part of a glob before its first wildcard
            base = p[: min(p.index(c) for c in "*?[" if c in p)]
            base = base if base.endswith("/") else os.path.dirname(base)
        roots.append(_local_path(base or "."))
    return roots


def check_output(output: str, inputs: list[str] = ()) -> None:
    """Refuse an output phicurate must not write into; claim a new or empty one with the marker.

    Refused: a filesystem or bucket root, a home directory, a path inside one of the inputs (it would be read
    back as input on the next run), a file, and a non-empty directory without the marker, unless every entry
    in it is one phicurate makes (a stage directory or a known work directory), which is adopted.
    """
    if _is_local(output):
        path = _local_path(output)
        if os.path.dirname(path) == path:
            raise UserError(f"run.output '{output}' is a filesystem root; give a directory of its own")
        if path in _home_dirs():
            raise UserError(f"run.output '{output}' is a home directory; give a directory of its own")
    else:
        scheme, rest = output.split("://", 1)
        if "/" not in rest.strip("/"):
            raise UserError(
                f"run.output '{output}' is a bucket root; give a prefix, e.g. {scheme}://{rest}/run"
            )
        path = output.rstrip("/")
    for root in _input_roots(list(inputs)):
        if _inside(path, root):
            raise UserError(
                f"run.output '{output}' is inside the input '{root}': every run would read its own output "
                "back as input; put the output elsewhere"
            )
    fs, fs_path = storage.resolve(output)
    info = fs.get_file_info(fs_path)
    if info.type == pafs.FileType.File:
        raise UserError(f"run.output '{output}' is a file; give a directory")
    if info.type == pafs.FileType.Directory:
        if fs.get_file_info(storage.resolve(storage.join(output, MARKER))[1]).type == pafs.FileType.File:
            return
        entries = fs.get_file_info(pafs.FileSelector(fs_path))
        foreign = [e.base_name for e in entries if not _made_by_phicurate(fs, e)]
        if foreign:
            raise UserError(
                f"run.output '{output}' is a non-empty directory that phicurate did not create (it has no "
                f"{MARKER}; it holds {sorted(foreign)[:5]}); phicurate deletes and rewrites what is in its "
                "output, so give a new or empty directory"
            )
        if entries:
            logger.warning("%s: an output of an earlier phicurate version; adopted (marker added)", output)
    storage.make_dir(output)
    storage.write_json(storage.join(output, MARKER), {"created_by": "phicurate", "created": _now()})


def _made_by_phicurate(fs: pafs.FileSystem, entry: pafs.FileInfo) -> bool:
    from pipeline.registry import ORDER

    name = entry.base_name
    if name in (LOCK, MARKER) or name in KNOWN_ENTRIES or (name.startswith(".") and ".tmp-" in name):
        return True
    if name in ORDER and entry.type == pafs.FileType.Directory:
        return True  # a stage directory; rewritten only if it holds a record (storage.replace_dir)
    return False


def is_owned(output: str) -> bool:
    return storage.exists(storage.join(output, MARKER))


def _holder(lock: dict) -> str:
    return f"host {lock.get('host')}, pid {lock.get('pid')}, started {lock.get('start')}"


def _pid_alive(pid: int, start_ts: float | None) -> bool:
    """Whether `pid` on this host is the process that wrote the lock (a reused pid started later)."""
    try:
        import psutil

        p = psutil.Process(pid)
        return start_ts is None or p.create_time() <= start_ts + 1
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    except Exception:  # psutil.NoSuchProcess and friends
        return False


def stale_reason(lock: dict, now: float | None = None) -> str | None:
    """Why a lock's run is dead (None if it may live): same host and pid gone, or heartbeat expired."""
    now = time.time() if now is None else now
    if lock.get("host") == socket.gethostname() and isinstance(lock.get("pid"), int):
        if not _pid_alive(lock["pid"], lock.get("start_ts")):
            return f"pid {lock['pid']} no longer runs on {lock['host']}"
        return None
    beat = lock.get("heartbeat_ts")
    if isinstance(beat, (int, float)) and now - beat > STALE_AFTER_S:
        return f"its heartbeat is {now - beat:.0f} s old (stale after {STALE_AFTER_S:.0f} s)"
    return None


class OutputLock:
    """The lock of one output. Local: an flock on the lock file (the kernel drops it when the holder dies,
    even by SIGKILL), with the holder written in it. Object store: the lock object with a heartbeat,
    refreshed by a thread. On S3 every write is conditional: created with If-None-Match, taken over from a
    dead run, refreshed and deleted with If-Match on the ETag read, so of two runs racing, one wins."""

    def __init__(self, output: str, log: Callable[[str], None] = logger.warning):
        self.output = output
        self.uri = storage.join(output, LOCK)
        self.log = log
        start = time.time()
        self.info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start": _now(),
            "start_ts": start,
            "heartbeat_ts": start,
            "token": uuid.uuid4().hex,
        }
        self._fd: int | None = None
        self._etag: str | None = None  # of the lock object this run wrote (S3 with boto3)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _refuse(self, held: dict) -> UserError:
        return UserError(
            f"{self.output} is in use by another phicurate run ({_holder(held)}); one run per output: wait "
            f"for it to end, or give another output (lock: {self.uri})"
        )

    def _took_over(self, old: dict, why: str) -> None:
        self.log(f"took over the lock of a dead run on {self.output} ({_holder(old)}): {why}")

    # local disk
    def _acquire_local(self) -> None:
        import fcntl

        path = _local_path(self.uri)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise self._refuse(_read_local(path)) from None
            try:  # the file may have been removed by its releasing holder between open and flock
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = _read_local(path)
        if old.get("token"):
            self._took_over(old, stale_reason(old) or "it no longer holds the file lock")
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(self.info, indent=2) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd

    # object stores
    def _s3(self):
        """(client, bucket, key) of the lock on S3, where boto3 gives conditional writes; else None."""
        try:
            import boto3
        except ImportError:  # pyarrow's S3 filesystem has no conditional write
            return None
        if not self.uri.startswith("s3://"):
            return None
        bucket, key = self.uri[5:].split("/", 1)
        return boto3.client("s3"), bucket, key

    def _read_remote(self) -> tuple[dict, str | None]:
        """The lock's content and its ETag (None without boto3)."""
        s3 = self._s3()
        if s3 is None:
            return storage.read_json(self.uri) or {}, None
        client, bucket, key = s3
        try:
            got = client.get_object(Bucket=bucket, Key=key)
        except client.exceptions.NoSuchKey:
            return {}, None
        try:
            return json.loads(got["Body"].read() or b"{}"), got["ETag"]
        except ValueError:
            return {}, got["ETag"]

    def _acquire_remote(self) -> None:
        old, etag = self._read_remote()
        if old or etag is not None:
            why = stale_reason(old) if old else "the lock object is unreadable"
            if why is None:
                raise self._refuse(old)
            if etag is not None:
                taken = self._put_remote(if_match=etag)  # False: another run took it over first
            else:
                storage.remove_file(self.uri)
                taken = self._create_remote()
            if not taken:
                raise self._refuse(self._read_remote()[0])
            self._took_over(old, why)
        elif not self._create_remote():
            raise self._refuse(self._read_remote()[0])
        self._thread = threading.Thread(target=self._beat, name="phicurate-lock-heartbeat", daemon=True)
        self._thread.start()

    def _put_remote(self, if_match: str | None = None) -> bool:
        """Write the lock on S3 only if there is none (or, with `if_match`, only if it is still the object
        with that ETag): of two runs racing for it, exactly one wins. False for the loser."""
        import botocore.exceptions

        client, bucket, key = self._s3()
        body = (json.dumps(self.info, indent=2) + "\n").encode()
        cond = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
        try:
            self._etag = client.put_object(Bucket=bucket, Key=key, Body=body, **cond)["ETag"]
            return True
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
                "NoSuchKey",
            ):
                return False
            raise

    def _create_remote(self) -> bool:
        """Write the lock only if there is none; False if another run wrote one first."""
        if self._s3() is not None:
            return self._put_remote()
        # stores without a conditional write: write, then read back; the last writer wins, the other refuses
        storage.write_json(self.uri, self.info)
        time.sleep(1.0)
        return (storage.read_json(self.uri) or {}).get("token") == self.info["token"]

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.info["heartbeat_ts"] = time.time()
            if self._etag is not None:  # rewritten only if it is still the object this run wrote
                if self._put_remote(if_match=self._etag):
                    continue
                cur = self._read_remote()[0]
            else:
                cur = storage.read_json(self.uri) or {}
                if cur.get("token") == self.info["token"]:
                    storage.write_json(self.uri, self.info)
                    continue
            logger.error("%s: the output's lock was taken by %s", self.output, _holder(cur))
            return

    def acquire(self) -> "OutputLock":
        if _is_local(self.output):
            self._acquire_local()
        else:
            self._acquire_remote()
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(_local_path(self.uri))
            os.close(self._fd)  # closing drops the flock
            self._fd = None
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._etag is not None:  # deleted only if it is still the object this run wrote
            import botocore.exceptions

            client, bucket, key = self._s3()
            try:
                client.delete_object(Bucket=bucket, Key=key, IfMatch=self._etag)
                return
            except botocore.exceptions.ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "NoSuchKey"):
                    return  # another run's lock now: not ours to delete
                # a store without conditional deletes: the check below
        if (storage.read_json(self.uri) or {}).get("token") == self.info["token"]:
            storage.remove_file(self.uri)


def _read_local(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}


_held: dict[str, OutputLock] = {}


@contextlib.contextmanager
def claim(output: str, inputs: list[str] = (), log: Callable[[str], None] = logger.warning) -> Iterator[None]:
    """Check the output and hold its lock for the block; nested claims of the same output are free (the
    pipeline claims it once, `phicurate train` through the same stage function)."""
    key = _local_path(output) if _is_local(output) else output.rstrip("/")
    if key in _held:
        yield
        return
    check_output(output, inputs)
    lock = OutputLock(output, log).acquire()
    _held[key] = lock
    try:
        yield
    finally:
        del _held[key]
        lock.release()


def config_inputs(config) -> list[str]:
    """The input paths a config names (ingest.inputs): the output may not lie below any of them."""
    ingest = getattr(config, "ingest", None)
    return [i.path for i in ingest.inputs] if ingest is not None else []
