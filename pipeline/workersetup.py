"""What each worker of an in-process Ray runs before its first task (Ray's worker_process_setup_hook).

- The driver's directories are kept off `sys.path` (pipeline/workerpath.py).
- With `ray.worker_memory_mb`, the worker's data segment is capped (RLIMIT_DATA: heap and private
  mappings, not the object store's shared memory), so a task that needs more fails with MemoryError, which
  the runner reports as the stage running out of memory, instead of the kernel's OOM killer picking some
  process of the machine.
- The values of the secrets the config names (passed by name; each worker reads them from its own
  environment, so no value travels in the runtime_env) are scrubbed from every line the worker writes to
  stdout and stderr, which Ray keeps in its session's log files (`worker-*.out`/`.err`), and from every
  log record, whatever handler it reaches.
"""

from __future__ import annotations

import io
import os
import resource
import sys

from pipeline import redact
from pipeline.workerpath import guard


class _RedactingStream(io.TextIOBase):
    """A text stream that writes through to `raw` with the secrets replaced (per write: a secret split
    across two writes is not seen; print and logging write each line whole)."""

    def __init__(self, raw, secrets: dict[str, str]):
        self.raw = raw
        self.secrets = secrets

    def write(self, s: str) -> int:
        self.raw.write(redact.redact_text(s, self.secrets))
        return len(s)

    def flush(self) -> None:
        self.raw.flush()

    def fileno(self) -> int:
        return self.raw.fileno()

    def isatty(self) -> bool:
        return self.raw.isatty()

    @property
    def encoding(self):
        return getattr(self.raw, "encoding", "utf-8")


def setup(refused: frozenset[str], memory_bytes: int | None, secret_envs: tuple[str, ...]) -> None:
    guard(refused)
    if memory_bytes:
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            memory_bytes = min(memory_bytes, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, hard))
    secrets = {}
    for name in secret_envs:
        value = os.environ.get(name, "")
        if len(value) >= redact.MIN_SECRET_CHARS:
            secrets[value] = f"[redacted:{name}]"
    if secrets:
        sys.stdout = _RedactingStream(sys.stdout, secrets)
        sys.stderr = _RedactingStream(sys.stderr, secrets)
        redact.redacted_records(secrets).__enter__()  # for the worker's lifetime
