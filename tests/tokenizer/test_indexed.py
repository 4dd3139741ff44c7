"""Our Megatron indexed-dataset writer, checked field by field and against megatron-core's own code."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmhpc.tokenizer import indexed

DOCS = [[1, 2, 3], [4], [5, 6]]


def write(prefix, docs, dtype):
    with indexed.IndexedDatasetWriter(prefix, dtype) as w:
        for d in docs:
            w.add_document(d)
    return prefix


@pytest.mark.parametrize("dtype,code", [(np.uint16, 8), (np.int32, 4)])
def test_idx_layout_field_by_field(tmp_path, dtype, code):
    prefix = write(tmp_path / "x", DOCS, dtype)
    idx = (tmp_path / "x.idx").read_bytes()
    assert len(idx) == 34 + 12 * 3 + 8 * 4 == 102
    assert idx[:9] == b"MMIDIDX\x00\x00"
    assert struct.unpack_from("<Q", idx, 9)[0] == 1  # version
    assert idx[17] == code
    assert struct.unpack_from("<Q", idx, 18)[0] == 3  # sequences
    assert struct.unpack_from("<Q", idx, 26)[0] == 4  # document index entries
    assert struct.unpack_from("<3i", idx, 34) == (3, 1, 2)
    size = np.dtype(dtype).itemsize
    assert struct.unpack_from("<3q", idx, 46) == (0, 3 * size, 4 * size)
    assert struct.unpack_from("<4q", idx, 70) == (0, 1, 2, 3)
    binary = (tmp_path / "x.bin").read_bytes()
    assert binary == np.array([1, 2, 3, 4, 5, 6], dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    back = indexed.IndexedDatasetReader(prefix)
    assert [back[i].tolist() for i in range(len(back))] == DOCS


def test_dtype_rule_follows_megatron():
    from megatron.core.datasets.indexed_dataset import DType

    for vocab in (256, 32000, 65499, 65500, 65536, 128256):
        assert indexed.token_dtype(vocab) == np.dtype(DType.optimal_dtype(vocab)), vocab


@settings(max_examples=25, deadline=None)
@given(docs=st.lists(st.lists(st.integers(0, 65534), min_size=1, max_size=40), min_size=0, max_size=30),
       wide=st.booleans())
def test_bytes_equal_megatron_builder(tmp_path_factory, docs, wide):
    """Same documents through megatron-core's IndexedDatasetBuilder give byte-identical files."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    tmp = tmp_path_factory.mktemp("b")
    dtype = np.int32 if wide else np.uint16
    write(tmp / "ours", docs, dtype)
    builder = IndexedDatasetBuilder(str(tmp / "theirs.bin"), dtype=dtype)
    for d in docs:
        builder.add_document(torch.tensor(d), [len(d)])
    builder.finalize(str(tmp / "theirs.idx"))
    assert (tmp / "ours.bin").read_bytes() == (tmp / "theirs.bin").read_bytes()
    assert (tmp / "ours.idx").read_bytes() == (tmp / "theirs.idx").read_bytes()


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_megatron_indexed_dataset_reads_ours(tmp_path, dtype):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    rng = np.random.default_rng(0)
    hi = 65000 if dtype == np.uint16 else 200_000
    docs = [rng.integers(0, hi, size=int(n)).tolist() for n in rng.integers(1, 300, size=57)]
    write(tmp_path / "d", docs, dtype)
    ds = IndexedDataset(str(tmp_path / "d"), mmap=True)
    assert len(ds) == len(docs)
    assert ds.sequence_lengths.tolist() == [len(d) for d in docs]
    assert ds.document_indices.tolist() == list(range(len(docs) + 1))
    assert ds.index.dtype == dtype
    for i in (0, 1, 17, 56):
        assert ds[i].tolist() == docs[i]
        assert ds.get(i, offset=1, length=5).tolist() == docs[i][1:6]


def test_merge_is_megatron_add_index(tmp_path):
    """Merging parts equals writing all documents at once, and megatron's add_index gives the same bytes."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    parts = [[[1, 2], [3]], [], [[4, 5, 6]], [[7], [8, 9], [10]]]
    prefixes = [write(tmp_path / f"p{i}", docs, np.uint16) for i, docs in enumerate(parts)]
    merged = indexed.merge(prefixes, tmp_path / "merged")
    write(tmp_path / "whole", [d for p in parts for d in p], np.uint16)
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"merged{suffix}").read_bytes() == (tmp_path / f"whole{suffix}").read_bytes()
    assert merged.num_sequences == 6 and merged.num_tokens == 10
    builder = IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=np.uint16)
    for p in prefixes:
        builder.add_index(str(p))
    builder.finalize(str(tmp_path / "theirs.idx"))
    assert (tmp_path / "theirs.idx").read_bytes() == (tmp_path / "merged.idx").read_bytes()


def test_merge_refuses_mixed_dtypes(tmp_path):
    a = write(tmp_path / "a", [[1]], np.uint16)
    b = write(tmp_path / "b", [[1]], np.int32)
    with pytest.raises(indexed.IndexFormatError, match="different dtypes"):
        indexed.merge([a, b], tmp_path / "m")


def test_reader_rejects_damage(tmp_path):
    write(tmp_path / "x", DOCS, np.uint16)
    idx = (tmp_path / "x.idx").read_bytes()
    (tmp_path / "bad.idx").write_bytes(b"NOTMEGA\x00\x00" + idx[9:])
    with pytest.raises(indexed.IndexFormatError, match="bad magic"):
        indexed.read_index(tmp_path / "bad.idx")
    (tmp_path / "v.idx").write_bytes(idx[:9] + struct.pack("<Q", 2) + idx[17:])
    with pytest.raises(indexed.IndexFormatError, match="version 2"):
        indexed.read_index(tmp_path / "v.idx")
    (tmp_path / "short.idx").write_bytes(idx[:-8])
    with pytest.raises(indexed.IndexFormatError, match="expected 102"):
        indexed.read_index(tmp_path / "short.idx")
    (tmp_path / "x.bin").write_bytes((tmp_path / "x.bin").read_bytes()[:-2])  # a truncated .bin
    with pytest.raises(indexed.IndexFormatError, match="describes 12"):
        indexed.IndexedDatasetReader(tmp_path / "x")


def test_writer_refuses_ids_the_dtype_cannot_hold(tmp_path):
    with indexed.IndexedDatasetWriter(tmp_path / "x", np.uint16) as w:
        with pytest.raises(ValueError, match="cannot be stored as uint16"):
            w.add_document([1, 70000])
        with pytest.raises(ValueError, match="add up to"):
            w.add_sequences(np.array([1, 2, 3]), np.array([2]))


def test_abort_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with indexed.IndexedDatasetWriter(tmp_path / "x", np.uint16) as w:
            w.add_document([1, 2])
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
