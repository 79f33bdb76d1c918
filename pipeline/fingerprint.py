"""Fingerprints of files a stage reads from outside the pipeline (inputs, models, benchmarks, tokenizers).

One method for every stage and every place a file can live: name, size and modification time through
the storage layer, so a file on object storage counts as a file (S3's LastModified is what pyarrow
reports as mtime; a rewrite of an object gives it a new one). A directory stands for every file under it;
a name that is not a file (a Hugging Face Hub id, say) stands for itself.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import pyarrow.fs as pafs

from pipeline import storage


def _describe(path: str) -> list[str]:
    fs, p = storage.resolve(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.File:
        return [f"{path}\0{info.size}\0{info.mtime_ns}"]
    if info.type == pafs.FileType.Directory:
        found = fs.get_file_info(pafs.FileSelector(p, recursive=True))
        return [
            f"{path}/{i.path[len(p) :].lstrip('/')}\0{i.size}\0{i.mtime_ns}"
            for i in sorted(found, key=lambda i: i.path)
            if i.type == pafs.FileType.File
        ]
    return [f"{path}\0not a file"]


def outside_files(paths: Iterable[str | None]) -> str:
    """One hash over the given files (None entries are skipped): it changes when any of them changes."""
    h = hashlib.sha256()
    for path in paths:
        if path is not None:
            for line in _describe(path):
                h.update(line.encode() + b"\n")
    return h.hexdigest()[:16]
