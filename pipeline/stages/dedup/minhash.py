"""Per-document keys for dedup: a hash of the normalized text, a MinHash signature of word n-grams
(datasketch) and its LSH band keys, and the rank that decides which duplicate is kept.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from datasketch import MinHash

WORD = re.compile(r"\w+")
_PRIME64 = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime
_BAND_SEED = np.uint64(0xCBF29CE484222325)  # FNV-1a 64-bit offset basis


def exact_key(text: str) -> bytes:
    """128-bit hash of the text after Unicode NFKC, case folding and whitespace collapsing: copies that
    differ only in those count as exact duplicates."""
    norm = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return hashlib.blake2b(norm.encode("utf-8"), digest_size=16).digest()


def shingles(text: str, ngram: int) -> set[bytes]:
    """Word n-grams of the NFKC-normalized, lower-cased text (punctuation dropped). A text shorter than
    `ngram` words is one shingle; a text without words has none."""
    words = WORD.findall(unicodedata.normalize("NFKC", text).lower())
    if len(words) <= ngram:
        return {" ".join(words).encode("utf-8")} if words else set()
    return {" ".join(words[i : i + ngram]).encode("utf-8") for i in range(len(words) - ngram + 1)}


def signatures(texts: list[str], ngram: int, num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures (n x num_perm, uint64 values < 2**32) and a mask of documents that have words.

    datasketch's `MinHash.bulk` reuses one set of permutations for the whole batch; xxh32 replaces the
    default SHA-1 as shingle hash (datasketch's `hashfunc` hook) because per-shingle hashing dominates:
    measured in bench/dedup_speed.py."""
    sets = [shingles(t, ngram) for t in texts]
    hashes = MinHash.bulk(sets, num_perm=num_perm, seed=seed, hashfunc=xxhash.xxh32_intdigest)
    sig = np.stack([m.hashvalues for m in hashes]) if hashes else np.zeros((0, num_perm), np.uint64)
    return sig.astype(np.uint64), np.array([bool(s) for s in sets], dtype=bool)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (document, band): an FNV-style fold over the band's rows, seeded with the band
    number so equal values in different bands differ. Written with numpy because it runs vectorized over
    the whole batch (datasketch's MinHashLSH keeps its buckets in one process's memory)."""
    n = sig.shape[0]
    vals = sig[:, : bands * rows].reshape(n, bands, rows)
    h = np.broadcast_to(_BAND_SEED ^ np.arange(bands, dtype=np.uint64), (n, bands)).copy()
    with np.errstate(over="ignore"):
        for j in range(rows):
            h = (h ^ vals[:, :, j]) * _PRIME64
        h ^= h >> np.uint64(29)
    return h


def rank_keys(ids: pa.Array, scores: pa.Array | None, reference: bool) -> list[str]:
    """A string per document whose sort order is the keep order: reference documents first, then the
    highest score (null scores last), then the smallest id. The id is the tail after RANK_PREFIX chars."""
    if scores is None:
        enc = np.zeros(len(ids), dtype=np.uint64) + np.uint64(2**64 - 1)
    else:
        s = pc.fill_null(pc.cast(scores, pa.float64()), float("-inf")).to_numpy(zero_copy_only=False)
        bits = s.view(np.uint64)
        # order-preserving float -> uint64 (flip all bits of negatives, the sign bit of others), then
        # inverted so that a higher score sorts first
        sortable = np.where(bits >> np.uint64(63), ~bits, bits | np.uint64(1 << 63))
        enc = ~sortable
    flag = "0" if reference else "1"
    return [f"{flag}{e:016x}{i}" for e, i in zip(enc.tolist(), ids.to_pylist())]


RANK_PREFIX = 17
