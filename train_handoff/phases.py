"""The phases the trainer reads: each phase's manifest, its packed sequences in a seeded order, its held-out
set.

A phase is trained for its token budget (the manifest's `tokens`, or `train.max_phase_tokens` if smaller),
packed into
sequences of seq_len + 1 tokens (pipeline/shards.py); the order of the training sequences is a
permutation fixed by the seed and the phase name, so it is the same on every run and every machine.

Held-out loss per source: the mix writes `documents.parquet` beside each manifest (which document of which
source sits where in the shards). For each source the trainer takes documents from the end of the stream until
they fill `heldout_sequences` sequences (at most half of that source's documents), packs them into sequences
of
that source alone, and withholds from training every sequence that overlaps them. Without `documents.parquet`
the last `heldout_sequences` sequences of the stream are held out and reported as source `all`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow.parquet as pq

from pipeline.shards import (
    DOCUMENTS,
    WEIGHT_DIGITS,
    PackedSequences,
    ShardError,
    manifest_path,
    read_blend,
    read_manifest,
)
from train_handoff.config import TrainConfig
from train_handoff.errors import TrainError


@dataclass
class Phase:
    name: str
    fingerprint: str  # of the manifest: a checkpoint resumes only on the data it was trained on
    packed: int  # sequences the phase's shards hold
    withheld: int  # of those, sequences kept out of training because they overlap held-out documents
    order: np.ndarray  # indices of the training sequences, in training order, within the budget
    sequences: Callable[[np.ndarray], np.ndarray]  # indices -> [n, seq_len + 1] token ids
    heldout: dict[str, np.ndarray]  # source -> [n, seq_len + 1] token ids never trained on

    def steps(self, global_batch: int) -> int:
        return len(self.order) // global_batch


def fingerprint(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def _pack(manifest_file: str, manifest: dict, seq_len: int) -> PackedSequences:
    """The manifest's blend (what Megatron reads too) as one packed stream, shard after shard.

    The stream reads every shard once, so it is the blend only if each weight is its shard's share of the
    tokens (what the mix writes): other weights would be silently ignored here, so they are an error.
    """
    try:
        prefixes, weights = read_blend(manifest, manifest_file)
        if len(prefixes) != len(manifest["shards"]):
            raise ShardError(
                f"the blend names {len(prefixes)} shards but `shards` lists {len(manifest['shards'])}"
            )
        stream = PackedSequences(prefixes, seq_len)
    except ShardError as e:
        raise TrainError(f"{manifest_file}: {e}") from None
    total = int(stream.offsets[-1])
    shares = [s.num_tokens / total if total else 0.0 for s in stream.shards]
    if weights is not None and any(abs(w - x) > 10.0**-WEIGHT_DIGITS for w, x in zip(weights, shares)):
        raise TrainError(
            f"{manifest_file}: blend weights {weights} are not the shards' shares of the tokens "
            f"{[round(x, WEIGHT_DIGITS) for x in shares]}; the trainer reads each shard once, so it trains "
            f"only on a blend weighted by size (rerun the mix, or train with Megatron's --data-path)"
        )
    return stream


def heldout_by_source(
    stream: PackedSequences, documents: str, n_seq: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per source, `n_seq` sequences of its last documents in the stream, and the mask of sequences left to
    train on."""
    table = pq.read_table(documents, columns=["shard", "index", "source"])
    shard, index = table["shard"].to_numpy(), table["index"].to_numpy()
    encoded = table["source"].combine_chunks().dictionary_encode()  # codes, not millions of Python strings
    codes, names = encoded.indices.to_numpy(), encoded.dictionary.to_pylist()
    seq_len = stream.seq_len
    starts, sizes = np.zeros(len(shard), np.int64), np.zeros(len(shard), np.int64)
    for k, ds in enumerate(stream.shards):  # stream position and length of every document
        rows = shard == k
        starts[rows] = stream.offsets[k] + ds.starts[index[rows]]
        sizes[rows] = ds.sizes[index[rows]]
    train = np.ones(len(stream), bool)
    heldout = {}
    for code, source in sorted(enumerate(names), key=lambda cs: cs[1]):
        rows = np.flatnonzero(codes == code)
        rows = rows[np.argsort(starts[rows])][::-1]  # from the end of the stream backwards
        take = np.flatnonzero(np.cumsum(sizes[rows]) >= n_seq * seq_len + 1)
        rows = rows[: min(take[0] + 1 if len(take) else len(rows), len(rows) // 2)]
        if sizes[rows].sum() < seq_len + 1:
            continue  # too small a source to spare a sequence
        tokens = np.concatenate(
            [stream.shards[shard[r]].doc(int(index[r])) for r in sorted(rows, key=lambda r: starts[r])]
        )
        n = min(n_seq, (len(tokens) - 1) // seq_len)
        heldout[source] = np.stack(
            [tokens[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)]
        ).astype(np.int64)
        for r in rows:  # window i holds tokens [i * seq_len, i * seq_len + seq_len]
            lo = max((starts[r] + seq_len - 1) // seq_len - 1, 0)
            train[lo : (starts[r] + sizes[r] - 1) // seq_len + 1] = False
    return heldout, train


def load_phase(cfg: TrainConfig, mix_dir: str, name: str) -> tuple[Phase, dict]:
    """One phase: its manifest checked, its shards opened and packed, its order and held-out set fixed."""
    path = manifest_path(mix_dir, name)
    if "://" in path:
        raise TrainError(
            f"{path}: the trainer memory-maps shards from a local or shared filesystem, not an object store; "
            f"copy the mix there and point train.mix_dir at it"
        )
    manifest = read_manifest(mix_dir, name)
    seq_len = cfg.context
    stream = _pack(path, manifest, seq_len)
    documents = os.path.join(os.path.dirname(path), DOCUMENTS)
    if not cfg.heldout_sequences:
        heldout, train = {}, np.ones(len(stream), bool)
    elif os.path.exists(documents):
        heldout, train = heldout_by_source(stream, documents, cfg.heldout_sequences)
    else:
        train = np.arange(len(stream)) < len(stream) - cfg.heldout_sequences
        heldout = {"all": stream.batch(np.flatnonzero(~train))} if (~train).any() else {}
    budget = min(manifest["tokens"], cfg.max_phase_tokens or manifest["tokens"]) // seq_len
    key = int.from_bytes(hashlib.sha256(f"{cfg.seed}/{name}".encode()).digest()[:8], "little")
    order = stream.order(key)
    order = order[train[order]][:budget]
    phase = Phase(
        name=name,
        fingerprint=fingerprint(manifest),
        packed=len(stream),
        withheld=int((~train).sum()),
        order=order,
        sequences=stream.batch,
        heldout=heldout,
    )
    return phase, manifest


def load_phases(cfg: TrainConfig, mix_dir: str) -> tuple[list[Phase], dict]:
    """The configured phases in order, and the first phase's manifest (its tokenizer is every phase's)."""
    phases, first = [], None
    for name in cfg.phases:
        phase, manifest = load_phase(cfg, mix_dir, name)
        if first is None:
            first = manifest
        elif (manifest["tokenizer"], manifest["vocab_size"]) != (first["tokenizer"], first["vocab_size"]):
            raise TrainError(
                f"{manifest_path(mix_dir, name)}: tokenizer {manifest['tokenizer']!r} "
                f"({manifest['vocab_size']} tokens) "
                f"differs from {cfg.phases[0]}'s {first['tokenizer']!r} ({first['vocab_size']} tokens); "
                f"one model needs one vocabulary: rerun the mix with one tokenizer"
            )
        phases.append(phase)
    return phases, first
