"""Paths on local disk or object stores (s3://, gs://, ... through pyarrow / fsspec), one API for both."""

from __future__ import annotations

import json
import os
import posixpath

import pyarrow.fs as pafs

from pipeline.errors import UserError


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path for a local path or a URL. Local paths become absolute."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except pafs.ArrowInvalid:  # schemes pyarrow lacks natively (e.g. gcs via gcsfs, hf://): use fsspec
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if "://" in base else os.path.join(base, *parts)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_json(uri: str) -> dict | None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read().decode("utf-8"))


def write_json(uri: str, obj: dict) -> None:
    """Write JSON to a temporary name, then rename, so a reader never sees half a file."""
    fs, path = resolve(uri)
    tmp = path + ".tmp"
    with fs.open_output_stream(tmp) as f:
        f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    fs.move(tmp, path)


def list_files(uri: str, suffix: str = "", recursive: bool = False) -> list[str]:
    """Files directly under a directory (or below it, if recursive), sorted, as URIs/paths like the input."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
    names = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        return [f"{scheme}://{n}" for n in names]
    return names


def remove_file(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def remove_dir(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def make_dir(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def replace_dir(src: str, dst: str, owned_by: str = "_stage.json") -> None:
    """Move a finished stage directory into place: a rename on local disk, a copy-then-delete on object
    stores.

    An existing `dst` is deleted only if it holds `owned_by` (the record phicurate writes into every stage
    directory it makes): a directory somebody else put there is never deleted."""
    fs, src_path = resolve(src)
    _, dst_path = resolve(dst)
    if fs.get_file_info(dst_path).type != pafs.FileType.NotFound:
        if fs.get_file_info(posixpath.join(dst_path, owned_by)).type != pafs.FileType.File:
            raise UserError(
                f"{dst} exists but was not written by phicurate (it has no {owned_by}); it is not deleted: "
                "move it away or give another output"
            )
        fs.delete_dir(dst_path)
    if isinstance(fs, pafs.LocalFileSystem):
        fs.move(src_path, dst_path)
    else:  # object stores have no directory rename
        pafs.copy_files(src_path, dst_path, source_filesystem=fs, destination_filesystem=fs)
        fs.delete_dir(src_path)
