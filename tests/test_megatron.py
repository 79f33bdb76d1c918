"""Megatron indexed dataset: the .idx layout byte by byte, Megatron's own reader as the oracle, packing, bad
files."""

import struct

import numpy as np
import pytest

from pipeline.shards import (
    IndexedDataset,
    IndexedDatasetWriter,
    PackedSequences,
    ShardError,
    write_indexed_dataset,
)

DOCS = [[15043, 3186, 32000], [32000], [1, 2, 3, 4, 5, 32000], [29871, 65535, 32000]]


def _write(prefix, docs=DOCS, dtype=np.uint16):
    with IndexedDatasetWriter(str(prefix), dtype=dtype) as w:
        for d in docs:
            w.add_document(d)
    return w


def test_idx_layout_byte_by_byte(tmp_path):
    w = _write(tmp_path / "shard")
    sizes = [len(d) for d in DOCS]
    pointers = np.cumsum([0] + sizes[:-1]) * 2  # bytes: uint16 tokens
    expected = (
        b"MMIDIDX\x00\x00"  # header, 9 bytes
        + struct.pack("<Q", 1)  # version
        + struct.pack("<B", 8)  # dtype code 8 = uint16
        + struct.pack("<Q", len(DOCS))  # sequence count
        + struct.pack("<Q", len(DOCS) + 1)  # document count: document indices incl. the leading 0
        + struct.pack(f"<{len(DOCS)}i", *sizes)  # int32 sizes
        + struct.pack(f"<{len(DOCS)}q", *pointers)  # int64 byte pointers into .bin
        + struct.pack(f"<{len(DOCS) + 1}q", *range(len(DOCS) + 1))  # int64 document indices 0..n
    )
    assert (tmp_path / "shard.idx").read_bytes() == expected
    assert (tmp_path / "shard.bin").read_bytes() == struct.pack(
        f"<{sum(sizes)}H", *[t for d in DOCS for t in d]
    )
    assert (w.docs, w.tokens) == (4, 13)


def test_int32_dtype_code(tmp_path):
    _write(tmp_path / "big", docs=[[100_000, 7]], dtype=np.int32)
    raw = (tmp_path / "big.idx").read_bytes()
    assert raw[17] == 4  # dtype code 4 = int32
    assert IndexedDataset(str(tmp_path / "big")).doc(0).tolist() == [100_000, 7]


def test_our_reader_and_megatrons_reader_agree(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronIndexedDataset

    _write(tmp_path / "shard")
    ours = IndexedDataset(str(tmp_path / "shard.bin"))
    theirs = MegatronIndexedDataset(str(tmp_path / "shard"), multimodal=False, mmap=True)
    assert len(ours) == len(theirs) == len(DOCS)
    for i, d in enumerate(DOCS):
        assert ours.doc(i).tolist() == theirs[i].tolist() == d
    assert theirs.document_indices.tolist() == ours.document_indices.tolist() == list(range(len(DOCS) + 1))


def test_bad_shards_are_named(tmp_path):
    _write(tmp_path / "shard")
    idx = tmp_path / "shard.idx"
    good = idx.read_bytes()
    idx.write_bytes(b"NOTMEGA\x00\x00" + good[9:])
    with pytest.raises(ShardError, match=r"shard\.idx: header"):
        IndexedDataset(str(tmp_path / "shard"))
    idx.write_bytes(good[:9] + struct.pack("<Q", 2) + good[17:])
    with pytest.raises(ShardError, match="version 2"):
        IndexedDataset(str(tmp_path / "shard"))
    idx.write_bytes(good[:-8])
    with pytest.raises(ShardError, match="need"):
        IndexedDataset(str(tmp_path / "shard"))
    idx.write_bytes(good)
    (tmp_path / "shard.bin").write_bytes((tmp_path / "shard.bin").read_bytes()[:-2])
    with pytest.raises(ShardError, match=r"shard\.bin: 24 bytes, but the index lists 13 tokens"):
        IndexedDataset(str(tmp_path / "shard"))
    with pytest.raises(ShardError, match="missing"):
        IndexedDataset(str(tmp_path / "nothing"))


def test_packed_sequences_span_shards_and_cover_the_stream(tmp_path):
    _write(tmp_path / "a", docs=[[1, 2, 3], [4, 5]])
    _write(tmp_path / "empty", docs=[])
    _write(tmp_path / "b", docs=[[6, 7, 8, 9], [10]])
    packed = PackedSequences([str(tmp_path / p) for p in ("a", "empty", "b")], seq_len=3)
    assert len(packed) == 3  # 10 tokens: windows [1..4], [4..7], [7..10]
    assert packed.batch([0, 1, 2]).tolist() == [[1, 2, 3, 4], [4, 5, 6, 7], [7, 8, 9, 10]]
    with pytest.raises(IndexError):
        packed[3]
    order = packed.order(seed=1)
    assert sorted(order.tolist()) == [0, 1, 2]
    assert np.array_equal(order, packed.order(seed=1))
    big = PackedSequences([str(tmp_path / "a"), str(tmp_path / "b")], seq_len=1)
    assert not np.array_equal(big.order(seed=1), big.order(seed=2))


@pytest.mark.parametrize("dtype, docs", [(np.uint16, DOCS), (np.int32, [[100_000, 7], [3]]), (np.uint16, [])])
def test_write_at_once_gives_the_writers_bytes(tmp_path, dtype, docs):
    """What the mix's shard tasks write (all of a shard's tokens at once) is byte for byte what datatrove's
    writer writes document by document."""
    _write(tmp_path / "writer", docs=docs, dtype=dtype)
    data = b"".join(np.asarray(d, dtype=dtype).tobytes() for d in docs)
    write_indexed_dataset(str(tmp_path / "at_once"), [len(d) for d in docs], data, dtype=dtype)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"at_once{ext}").read_bytes() == (tmp_path / f"writer{ext}").read_bytes()
    with pytest.raises(ValueError, match="sizes add up"):
        write_indexed_dataset(str(tmp_path / "bad"), [len(d) + 1 for d in docs] or [1], data, dtype=dtype)


def test_write_at_once_to_an_object_store(s3_bucket, tmp_path):
    import pyarrow.fs as pafs

    data = b"".join(np.asarray(d, dtype=np.uint16).tobytes() for d in DOCS)
    write_indexed_dataset(f"{s3_bucket}/mix/shard", [len(d) for d in DOCS], data)
    fs, path = pafs.FileSystem.from_uri(f"{s3_bucket}/mix")
    (tmp_path / "copy").mkdir()
    pafs.copy_files(
        path, str(tmp_path / "copy"), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
    )
    assert [
        IndexedDataset(str(tmp_path / "copy" / "shard")).doc(i).tolist() for i in range(len(DOCS))
    ] == DOCS
