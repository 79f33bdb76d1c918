"""The shard format: what `mix` writes and a trainer reads. Megatron-LM indexed datasets (`.bin` tokens +
`.idx` index, "MMIDIDX" version 1) to write, read and pack, and each phase's `manifest.json` and
`documents.parquet` beside them. This module imports nothing else of phicurate, so a trainer (ours in
train_handoff/, or any other) can read a mix with it alone.

Layout of the `.idx` file (megatron/core/datasets/indexed_dataset.py, `_IndexWriter`):
    b"MMIDIDX\\x00\\x00" | <Q version = 1 | <B dtype code | <Q sequence count n | <Q document count n + 1
    | int32 sizes[n] | int64 byte pointers[n] | int64 document indices[n + 1] (0, 1, ..., n: one sequence per
    document)
The `.bin` file is the documents' token ids back to back in that dtype.

`IndexedDatasetWriter` writes document by document through datatrove's `MegatronTokenizedFile`;
`write_indexed_dataset` writes a shard whose tokens are already in memory at once, to a local path or an
object store (the mix's shard tasks), with the same bytes. Reading is
written here: Megatron's own reader needs torch and megatron-core, which a data job or a non-Megatron trainer
should not need; ours memory-maps both files, checks the header and that the index and the data agree, and
adds the fixed-length training sequences (packing) the trainer consumes. Megatron's reader is the test oracle.
"""

from __future__ import annotations

import json
import os
import posixpath
import struct

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

HEADER = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
_PREAMBLE = struct.Struct("<9sQBQQ")  # header, version, dtype code, sequence count, document count: 34 bytes


class ShardError(ValueError):
    """A `.bin`/`.idx` pair that is not a readable Megatron indexed dataset; the message names the file."""


class IndexedDatasetWriter:
    """Append documents (token id lists) to `<prefix>.bin`; `close()` writes `<prefix>.idx`."""

    def __init__(self, prefix: str, dtype: type = np.uint16):
        from datatrove.pipeline.tokens.megatron_tokenizer import MegatronTokenizedFile

        if dtype not in (np.uint16, np.int32):
            raise ValueError(f"token dtype must be uint16 or int32 (Megatron's choices), got {dtype}")
        folder, name = os.path.split(prefix) if "://" not in prefix else prefix.rsplit("/", 1)
        self.prefix = prefix
        self.dtype = dtype
        self._file = MegatronTokenizedFile(folder or ".", name, token_size=np.dtype(dtype).itemsize)
        self.tokens = 0
        self.docs = 0

    def add_document(self, tokens) -> None:
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"{self.prefix}: token id out of range for {np.dtype(self.dtype).name}")
        self._file.write(tokens)
        self.tokens += int(tokens.size)
        self.docs += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self._file.bin_file.close()


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    return (
        pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), os.path.abspath(path))
    )


def write_indexed_dataset(prefix: str, sizes: np.ndarray, data, dtype: type = np.uint16) -> None:
    """`<prefix>.bin` and `<prefix>.idx` (local path or object-store URI) of documents whose tokens are
    already back to back in `data` (bytes of `dtype`), `sizes[i]` tokens each.

    The same bytes as `IndexedDatasetWriter` (tested), written at once: a mix task holds a whole shard,
    and datatrove's writer appends document by document from Python and reaches object stores only
    through fsspec's s3fs, which the pipeline does not install (pyarrow's filesystems are used here).
    """
    if dtype not in (np.uint16, np.int32):
        raise ValueError(f"token dtype must be uint16 or int32 (Megatron's choices), got {dtype}")
    sizes = np.asarray(sizes, dtype=np.int32)
    n = len(sizes)
    itemsize = np.dtype(dtype).itemsize
    if len(data) != int(sizes.sum(dtype=np.int64)) * itemsize:
        raise ValueError(
            f"{prefix}: {len(data)} bytes of tokens, but the sizes add up to {sizes.sum()} tokens"
        )
    pointers = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)[:-1]]) if n else np.zeros(0, np.int64)
    code = {np.uint16: 8, np.int32: 4}[dtype]
    fs, path = _filesystem(prefix)
    with fs.open_output_stream(path + ".bin") as f:
        f.write(data)
    with fs.open_output_stream(path + ".idx") as f:
        f.write(_PREAMBLE.pack(HEADER, VERSION, code, n, n + 1))
        f.write(sizes.tobytes())
        f.write((pointers * itemsize).tobytes())
        f.write(np.arange(n + 1, dtype=np.int64).tobytes())


class IndexedDataset:
    """One shard, memory-mapped. `len(ds)` documents; `ds.doc(i)` is a view of document i's tokens."""

    def __init__(self, prefix: str):
        self.prefix = prefix.removesuffix(".bin").removesuffix(".idx")
        idx_path, bin_path = self.prefix + ".idx", self.prefix + ".bin"
        for p in (idx_path, bin_path):
            if not os.path.isfile(p):
                raise ShardError(
                    f"{p}: missing (a Megatron shard is a .bin and an .idx with the same prefix)"
                )
        with open(idx_path, "rb") as f:
            raw = f.read(_PREAMBLE.size)
        if len(raw) < _PREAMBLE.size:
            raise ShardError(
                f"{idx_path}: {len(raw)} bytes, shorter than the {_PREAMBLE.size}-byte Megatron index header"
            )
        header, version, code, n, n_docs = _PREAMBLE.unpack(raw)
        if header != HEADER:
            raise ShardError(f"{idx_path}: header {header!r} is not Megatron's {HEADER!r}")
        if version != VERSION:
            raise ShardError(f"{idx_path}: index version {version}, expected {VERSION}")
        if code not in DTYPE_CODES:
            raise ShardError(f"{idx_path}: unknown dtype code {code} (Megatron's codes are 1-8)")
        self.dtype = np.dtype(DTYPE_CODES[code])
        expected = _PREAMBLE.size + n * (4 + 8) + n_docs * 8
        size = os.path.getsize(idx_path)
        if size < expected:
            raise ShardError(
                f"{idx_path}: {size} bytes, but {n} sequences and {n_docs} document indices need {expected}"
            )
        idx = np.memmap(idx_path, mode="r", dtype=np.uint8)
        self.sizes = np.frombuffer(idx, np.int32, n, _PREAMBLE.size)
        self.pointers = np.frombuffer(idx, np.int64, n, _PREAMBLE.size + 4 * n)
        self.document_indices = np.frombuffer(idx, np.int64, n_docs, _PREAMBLE.size + 12 * n)
        n_tokens = int(self.sizes.sum(dtype=np.int64))
        bin_size = os.path.getsize(bin_path)
        if bin_size != n_tokens * self.dtype.itemsize:
            raise ShardError(
                f"{bin_path}: {bin_size} bytes, but the index lists {n_tokens} tokens of "
                f"{self.dtype.itemsize} bytes"
            )
        self.tokens = np.memmap(bin_path, mode="r", dtype=self.dtype) if n_tokens else np.zeros(0, self.dtype)
        self.starts = (
            np.concatenate([[0], np.cumsum(self.sizes, dtype=np.int64)[:-1]]) if n else np.zeros(0, np.int64)
        )
        if n and not np.array_equal(self.pointers, self.starts * self.dtype.itemsize):
            raise ShardError(f"{idx_path}: sequence pointers do not follow the sizes (not a contiguous .bin)")

    def __len__(self) -> int:
        return len(self.sizes)

    def doc(self, i: int) -> np.ndarray:
        start = self.starts[i]
        return self.tokens[start : start + self.sizes[i]]

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.size)


class PackedSequences:
    """Fixed-length training sequences over the token stream of several shards, in the order given.

    Sequence i is tokens [i * seq_len, i * seq_len + seq_len + 1) of the concatenated stream: inputs and
    next-token targets in one window, each window sharing its last token with the next (as Megatron's GPT
    dataset does). Documents cross window boundaries; their EOS tokens mark where one ends.
    """

    def __init__(self, shards: list[str] | list[IndexedDataset], seq_len: int):
        if seq_len < 1:
            raise ValueError(f"seq_len must be at least 1, got {seq_len}")
        self.shards = [s if isinstance(s, IndexedDataset) else IndexedDataset(s) for s in shards]
        self.seq_len = seq_len
        # stream start of each shard
        self.offsets = np.cumsum([0] + [s.num_tokens for s in self.shards], dtype=np.int64)
        total = int(self.offsets[-1])
        self.n = max(0, (total - 1) // seq_len)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.n:
            raise IndexError(f"sequence {i} out of range (0..{self.n - 1})")
        start, stop = i * self.seq_len, i * self.seq_len + self.seq_len + 1
        out = np.empty(stop - start, dtype=np.int64)
        k = int(np.searchsorted(self.offsets, start, side="right")) - 1
        filled = 0
        while filled < len(out):  # a window may span the end of one shard and the start of the next
            shard, base = self.shards[k], int(self.offsets[k])
            piece = shard.tokens[start + filled - base : min(stop - base, shard.num_tokens)]
            out[filled : filled + len(piece)] = piece
            filled += len(piece)
            k += 1
        return out

    def order(self, seed: int) -> np.ndarray:
        """A permutation of the sequence indices fixed by the seed: the same on every machine."""
        return np.random.default_rng(seed).permutation(self.n)

    def batch(self, indices) -> np.ndarray:
        """[len(indices), seq_len + 1] token ids."""
        return (
            np.stack([self[int(i)] for i in indices])
            if len(indices)
            else np.zeros((0, self.seq_len + 1), np.int64)
        )


MANIFEST = "manifest.json"  # per phase: what the shards hold (DESIGN.md "Contracts")
MANIFEST_KEYS = ("phase", "tokenizer", "vocab_size", "tokens", "sources", "shards")
WEIGHT_DIGITS = 6  # blend weights are written rounded to this many decimals
# per phase: which document of which source sits where in the shards. A directory of one Parquet part per
# shard (`documents.parquet/shard_00000.parquet`, written by the task that wrote the shard), which
# `pyarrow.parquet.read_table` reads as one table; older mixes wrote one file of that name.
DOCUMENTS = "documents.parquet"
DOCUMENTS_SCHEMA = pa.schema(
    [
        ("shard", pa.int32()),  # index into the manifest's `shards`
        ("index", pa.int64()),  # the document's position in that shard
        ("source", pa.string()),  # the recipe source it was drawn for
        ("id", pa.string()),  # the document's id in the pipeline
        ("doc_source", pa.string()),  # the document's own `source` (e.g. web/python-docs)
        ("tokens", pa.int64()),
    ]
)


def manifest_path(mix_dir: str, phase: str) -> str:
    join = posixpath.join if "://" in mix_dir else os.path.join
    return join(mix_dir, phase, MANIFEST)


def phase_location(path: str) -> str:
    """Where a phase directory is, as any tool can name it: an absolute local path or the full URI."""
    return path.rstrip("/") if "://" in path else os.path.abspath(path)


def blend_fields(location: str, shards: list[str], shard_tokens: list[int]) -> dict:
    """The manifest's Megatron fields for shards (names relative to the phase directory) at `location`.

    `blend` is what `GPTDatasetConfig(blend=(prefixes, weights))` takes, and `data_path` the same as the
    `--data-path` string of Megatron-LM's pretrain_gpt.py: prefixes that resolve from any working directory
    (absolute paths, or full URIs on an object store), weighted by each shard's share of the tokens, so a
    blended dataset reads every shard in proportion to its size. `dir` records where they were written;
    a reader of a mix copied elsewhere rebases them onto where the manifest now is (`read_blend`).
    """
    location = phase_location(location)
    join = posixpath.join if "://" in location else os.path.join
    total = sum(shard_tokens)
    weights = [round(t / total, WEIGHT_DIGITS) if total else 0.0 for t in shard_tokens]
    prefixes = [join(location, s) for s in shards]
    return {
        "dir": location,
        "shard_tokens": [int(t) for t in shard_tokens],
        "blend": {"prefixes": prefixes, "weights": weights},
        "data_path": data_path(
            {"blend": {"prefixes": prefixes, "weights": weights}}, join(location, MANIFEST)
        ),
    }


def read_blend(manifest: dict, manifest_file: str) -> tuple[list[str], list[float] | None]:
    """The blend's shard prefixes, resolved where the manifest now is, and their weights.

    Current manifests name absolute prefixes (or URIs) under their `dir`; when the mix has been moved or
    copied since (e.g. from an object store to a shared disk), prefixes under the old `dir` are rebased onto
    the manifest's own directory. Older manifests wrote `blend` as "w1 shard_00000 w2 shard_00001 ..." with
    names relative to the manifest's directory; those, and relative prefixes, are joined to it. Without a
    blend at all, the `shards` are read with no weights.
    """
    remote = "://" in manifest_file
    here = manifest_file.rsplit("/", 1)[0] if remote else os.path.dirname(os.path.abspath(manifest_file))
    join = posixpath.join if remote else os.path.join
    blend = manifest.get("blend")
    if isinstance(blend, dict):
        prefixes, weights = list(blend.get("prefixes", [])), blend.get("weights")
    elif isinstance(blend, str):  # older manifests: "weight name weight name ..."
        words = blend.split()
        if len(words) % 2:
            raise ShardError(f"{manifest_file}: blend {blend!r} is not pairs of 'weight shard'")
        try:
            weights = [float(w) for w in words[::2]]
        except ValueError:
            raise ShardError(f"{manifest_file}: blend {blend!r} has a weight that is not a number") from None
        prefixes = words[1::2]
    elif blend is None:
        prefixes, weights = list(manifest["shards"]), None
    else:
        raise ShardError(f"{manifest_file}: blend must be an object with prefixes and weights, got {blend!r}")
    if weights is not None and len(weights) != len(prefixes):
        raise ShardError(
            f"{manifest_file}: the blend has {len(prefixes)} prefixes but {len(weights)} weights"
        )
    old = manifest.get("dir")
    resolved = []
    for p in prefixes:
        if old and old != here and p.startswith(old.rstrip("/") + "/"):
            p = join(here, p[len(old.rstrip("/")) + 1 :])
        elif "://" not in p and not os.path.isabs(p):
            p = join(here, p)
        resolved.append(p)
    return resolved, weights


def data_path(manifest: dict, manifest_file: str) -> str:
    """Megatron-LM's `--data-path` string of the blend as `read_blend` resolves it where the manifest is."""
    prefixes, weights = read_blend(manifest, manifest_file)
    if weights is None:
        return " ".join(prefixes)
    return " ".join(f"{w:.{WEIGHT_DIGITS}f} {p}" for w, p in zip(weights, prefixes))


def write_manifest(out_dir: str, manifest: dict) -> None:
    """The manifest of a phase written into its phase directory (local path or object-store URI)."""
    fs, path = _filesystem((posixpath.join if "://" in out_dir else os.path.join)(out_dir, MANIFEST))
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(manifest, indent=2).encode("utf-8"))


def read_manifest(mix_dir: str, phase: str) -> dict:
    """A phase's manifest (local path or object-store URI), checked for the keys a trainer needs."""
    path = manifest_path(mix_dir, phase)
    fs, p = _filesystem(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        raise ShardError(
            f"{path}: no manifest; the mix stage writes it: run it first (phicurate run CONFIG --stages mix, "
            f"with a `mix:` section in the config) or point train.mix_dir at a finished mix"
        )
    with fs.open_input_stream(p) as f:
        try:
            manifest = json.loads(f.read().decode("utf-8"))
        except ValueError as e:
            raise ShardError(f"{path}: not valid JSON: {e}") from None
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ShardError(f"{path}: manifest lacks {missing}; expected the keys {list(MANIFEST_KEYS)}")
    if not isinstance(manifest["vocab_size"], int) or manifest["vocab_size"] < 1:
        raise ShardError(f"{path}: vocab_size must be a positive integer, got {manifest['vocab_size']!r}")
    return manifest


if __name__ == "__main__":  # python -m pipeline.shards PHASE_DIR/manifest.json: --data-path where it is now
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m pipeline.shards PHASE_DIR/manifest.json")
    with open(sys.argv[1], encoding="utf-8") as f:
        print(data_path(json.load(f), sys.argv[1]))
