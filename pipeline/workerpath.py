"""A Ray worker's `sys.path` without the driver's directories (imports nothing: it loads in every worker).

Ray inserts the driver's working directory and script directory at the front of every worker's sys.path
(ray/_private/worker.py, `_py_driver_sys_path`, applied on the worker's first task), so a `json.py` or
`concurrent.py` in the directory a user happened to run from would replace the standard library inside the
workers. Ray's worker_process_setup_hook runs before that insertion; it replaces sys.path with this list,
which declines those directories. Ray calls sys.path.insert for each (checked on Ray 2.60).
"""

from __future__ import annotations

import sys


class _WithoutDriverDirs(list):
    def __init__(self, items, refused: frozenset[str]):
        super().__init__(items)
        self.refused = refused

    def insert(self, index, path):
        if path not in self.refused:
            super().insert(index, path)


def guard(refused: frozenset[str]) -> None:
    """The setup hook: from now on, `refused` directories are not inserted into sys.path."""
    sys.path = _WithoutDriverDirs([p for p in sys.path if p not in refused], refused)
