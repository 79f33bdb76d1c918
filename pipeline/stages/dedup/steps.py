"""Commit per step: each of dedup's global steps writes its tables under `<work_dir>/_steps/<step>/` and then
`<work_dir>/_steps/<step>.json`, its commit record (written last, with the step's counts).

A rerun in the same work directory (the runner names it after the config and the input, and keeps it
after a kill) reuses every step whose record is there, in order, and redoes the first one without a record
and everything after it: a later step's files are a function of the earlier ones, so once one step is
recomputed none after it is trusted. Whatever an uncommitted step left is removed before it is redone.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from pipeline import storage

logger = logging.getLogger(__name__)

STEPS = "_steps"


class Steps:
    def __init__(self, work_dir: str, key: str):
        self.root = storage.join(work_dir, STEPS)
        self.key = key  # what the steps' files depend on beyond the work directory's input (the settings)
        self.reused: list[str] = []
        self.done: list[str] = []
        self._fresh = False  # a step has been recomputed: no later record is trusted

    def dir(self, step: str, *sub: str) -> str:
        return storage.join(self.root, step, *sub)

    def run(self, step: str, compute: Callable[[str], dict]) -> dict:
        """The counts of `step`: from its commit record, or from `compute(step directory)`, committed."""
        record_uri = storage.join(self.root, f"{step}.json")
        record = None if self._fresh else storage.read_json(record_uri)
        self.done.append(step)
        if record is not None and record.get("key") == self.key:
            self.reused.append(step)
            logger.info("dedup: step %s committed by an earlier run: reused", step)
            return record["counts"]
        self._fresh = True
        storage.remove_file(record_uri)
        storage.remove_dir(self.dir(step))
        t0 = time.perf_counter()
        counts = compute(self.dir(step))
        storage.make_dir(self.root)
        storage.write_json(record_uri, {"step": step, "key": self.key, "counts": counts})  # the commit
        logger.info("dedup: step %s committed in %.1f s: %s", step, time.perf_counter() - t0, counts)
        return counts
