"""The direct-chunk reader, checked bit for bit against h5py's own read (``dset[...]``) of the same dataset.

Fast-path cases also assert that ``dset[...]`` is never called, so they test the chunk decoding rather than
the fallback; fallback cases assert that it is.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import deflate
import h5py
import numpy as np
import pytest
from isal import isal_zlib

from polaragg import chunks
from polaragg.chunks import INFLATE_ERRORS, inflate_name, read_column
from polaragg.products.atl06 import SEGMENTS_GROUP
from polaragg.synthetic import SynthConfig, generate

F32_FILL = np.float32(3.4028235e38)


def _values(dtype: str, n: int, seed: int = 0) -> np.ndarray:
    """A column with NaN and the float32 fill value where floats, the type's extremes where integers."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        x = (rng.normal(size=n) * 1000).astype(dt)
        x[::17] = np.nan
        x[5::23] = F32_FILL
        return x
    info = np.iinfo(dt)
    x = rng.integers(info.min, info.max, size=n, endpoint=True).astype(dt)
    x[::19] = info.max
    return x


def _reference(path: Path, name: str = "x") -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[name][...]


def _read(path: Path, use_fd: bool, name: str = "x") -> np.ndarray:
    with h5py.File(path, "r") as f:
        if not use_fd:
            return read_column(f[name])
        fd = os.open(path, os.O_RDONLY)
        try:
            return read_column(f[name], fd)
        finally:
            os.close(fd)


def _check(path: Path, use_fd: bool, monkeypatch: pytest.MonkeyPatch, fast: bool, name: str = "x") -> None:
    """read_column equals dset[...] in values and dtype; ``fast``: without calling dset[...] at all."""
    expected = _reference(path, name)
    calls = []
    original = h5py.Dataset.__getitem__

    def counting(self, key):
        calls.append(key)
        return original(self, key)

    with monkeypatch.context() as m:
        m.setattr(h5py.Dataset, "__getitem__", counting)
        got = _read(path, use_fd, name)
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected, strict=True)  # NaN == NaN here
    assert (not calls) if fast else calls, f"fast path expected {fast}, dset[...] calls: {calls}"


INFLATERS = ("libdeflate", "isal", "zlib")
# The error each inflater raises for a damaged stream.
INFLATER_ERRORS = {"libdeflate": deflate.DeflateError, "isal": isal_zlib.error, "zlib": zlib.error}


def _use(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make read_column inflate with the named inflater, whatever the timing picked."""
    inflate = chunks._inflaters()[name]
    monkeypatch.setattr(chunks, "_inflater", lambda: (name, inflate))


def test_the_timed_inflater_is_one_of_the_fast_ones():
    """Both declared inflaters are installed, so the timing picks one of them, never the zlib fallback."""
    assert set(chunks._inflaters()) == set(INFLATERS)
    assert inflate_name() in ("libdeflate", "isal")


def test_inflaters_agree_with_zlib_on_every_stream():
    """The same bytes from every inflater, on streams of every level and shape a chunk can have."""
    rng = np.random.default_rng(3)
    payloads = [rng.normal(size=10_000).tobytes(), np.zeros(8000).tobytes(), rng.integers(0, 4, 30_000, np.uint8).tobytes(),
                b"", np.cumsum(rng.normal(size=5000)).astype("<f4").tobytes()]
    for payload in payloads:
        for level in (0, 1, 6, 9):
            raw = zlib.compress(payload, level)
            for name, inflate in chunks._inflaters().items():
                assert inflate(raw, len(payload)) == payload, (name, level, len(payload))


@pytest.mark.parametrize("name", INFLATERS)
@pytest.mark.parametrize("use_fd", [True, False], ids=["fd", "no-fd"])
def test_every_inflater_reads_what_h5py_reads(tmp_path, monkeypatch, use_fd, name):
    """With each inflater the same chunks give h5py's values (the timing may pick either fast one)."""
    _use(monkeypatch, name)
    assert inflate_name() == name
    path = tmp_path / "z.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=_values("<u2", 2500), chunks=(1000,), compression="gzip", shuffle=True)
        f.create_dataset("y", data=_values("<f8", 2222), chunks=(1000,), compression="gzip")
    _check(path, use_fd, monkeypatch, fast=True)
    _check(path, use_fd, monkeypatch, fast=True, name="y")


@pytest.mark.parametrize("use_fd", [True, False], ids=["fd", "no-fd"])
@pytest.mark.parametrize("shuffle", [False, True], ids=["plain", "shuffle"])
@pytest.mark.parametrize("level", [1, 6])
@pytest.mark.parametrize("dtype", ["<f8", "<f4", "i1", "<u2", ">f8"])
@pytest.mark.parametrize(
    ("n", "chunk"), [(3000, 500), (3001, 500), (77, 500)], ids=["divides", "partial-last", "under-one-chunk"]
)
def test_matches_h5py(tmp_path, monkeypatch, dtype, level, shuffle, use_fd, n, chunk):
    path = tmp_path / "a.h5"
    fill = F32_FILL if np.dtype(dtype).kind == "f" else 0
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "x", data=_values(dtype, n), chunks=(chunk,), compression="gzip", compression_opts=level,
            shuffle=shuffle, fillvalue=fill, maxshape=(None,) if n < chunk else (n,),
        )
    _check(path, use_fd, monkeypatch, fast=True)


@pytest.mark.parametrize("use_fd", [True, False], ids=["fd", "no-fd"])
def test_empty_dataset(tmp_path, monkeypatch, use_fd):
    path = tmp_path / "e.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", shape=(0,), dtype="<f8", chunks=(100,), maxshape=(None,), compression="gzip")
    _check(path, use_fd, monkeypatch, fast=True)


@pytest.mark.parametrize("use_fd", [True, False], ids=["fd", "no-fd"])
def test_userblock(tmp_path, monkeypatch, use_fd):
    """Chunk addresses from the index are absolute file offsets, also behind a user block."""
    path = tmp_path / "u.h5"
    with h5py.File(path, "w", userblock_size=1024) as f:
        f.create_dataset("x", data=_values("<f8", 2500), chunks=(1000,), compression="gzip", shuffle=True)
    _check(path, use_fd, monkeypatch, fast=True)


FALLBACKS = {
    "contiguous": dict(data=_values("<f8", 1000)),
    "compact": dict(data=_values("<i2", 50)),
    "fletcher32": dict(data=_values("<f4", 1000), chunks=(300,), compression="gzip", fletcher32=True),
    "lzf": dict(data=_values("<f8", 1000), chunks=(300,), compression="lzf"),
    "scaleoffset": dict(data=_values("<i4", 1000), chunks=(300,), compression="gzip", scaleoffset=0),
    "shuffle-only": dict(data=_values("<u2", 1000), chunks=(300,), shuffle=True),
    "chunked-unfiltered": dict(data=_values("<f8", 1000), chunks=(300,)),
    "2-d": dict(data=_values("<f8", 1000).reshape(100, 10), chunks=(30, 10), compression="gzip"),
    "bool": dict(data=np.arange(1000) % 3 == 0, chunks=(300,), compression="gzip"),
    "complex": dict(data=np.arange(1000) * (1 + 2j), chunks=(300,), compression="gzip"),
}


@pytest.mark.parametrize("use_fd", [True, False], ids=["fd", "no-fd"])
@pytest.mark.parametrize("case", list(FALLBACKS))
def test_fallbacks(tmp_path, monkeypatch, case, use_fd):
    path = tmp_path / "f.h5"
    kwargs = dict(FALLBACKS[case])
    with h5py.File(path, "w") as f:
        if case == "compact":
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_layout(h5py.h5d.COMPACT)
            data = kwargs.pop("data")
            space = h5py.h5s.create_simple(data.shape)
            dsid = h5py.h5d.create(f.id, b"x", h5py.h5t.py_create(data.dtype), space, dcpl=dcpl)
            dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, data)
        else:
            f.create_dataset("x", **kwargs)
    _check(path, use_fd, monkeypatch, fast=False)


@pytest.mark.parametrize("use_fd", [True, False], ids=["fd", "no-fd"])
def test_unwritten_chunks_read_as_fill(tmp_path, monkeypatch, use_fd):
    path = tmp_path / "holes.h5"
    data = _values("<f4", 1000)
    with h5py.File(path, "w") as f:
        d = f.create_dataset(
            "x", shape=(1000,), dtype="<f4", chunks=(100,), compression="gzip", shuffle=True, fillvalue=F32_FILL
        )
        d[0:300] = data[0:300]
        d[620:1000] = data[620:1000]  # chunks 300..599 never written; chunk 600..699 partly
    expected = _reference(path)
    assert (expected[300:620] == F32_FILL).all()
    _check(path, use_fd, monkeypatch, fast=False)


@pytest.mark.parametrize("name", INFLATERS)
@pytest.mark.parametrize("use_fd", [True, False], ids=["fd", "no-fd"])
@pytest.mark.parametrize("shuffle", [False, True], ids=["plain", "shuffle"])
def test_corrupt_chunk_raises(tmp_path, monkeypatch, use_fd, shuffle, name):
    """A damaged deflate stream raises the inflater's own error (one of INFLATE_ERRORS), never wrong data."""
    _use(monkeypatch, name)
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=_values("<f8", 3000), chunks=(1000,), compression="gzip", shuffle=shuffle)
    with h5py.File(path, "r") as f:
        info = f["x"].id.get_chunk_info(1)
    assert info.size > 100
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(b"\xff\x00\x5a\xa5\xff\x00\x5a\xa5")
    with pytest.raises(INFLATE_ERRORS) as caught:
        _read(path, use_fd)
    assert isinstance(caught.value, INFLATER_ERRORS[name]), caught.value  # bad data or checksum
    with pytest.raises(OSError):  # h5py's own read of the same file fails too
        _reference(path)


@pytest.fixture(scope="module")
def granule(tmp_path_factory) -> Path:
    """One synthetic full-region granule: six beams, ~101k rows per beam in chunks of 10000 (last partial)."""
    (g,) = generate(tmp_path_factory.mktemp("granule"), SynthConfig(seed=7, rgts=(5,), regions=(10,)))
    return g.h5_path


@pytest.mark.parametrize("use_fd", [True, False], ids=["fd", "no-fd"])
def test_synthetic_granule(granule, monkeypatch, use_fd):
    with h5py.File(granule, "r") as f:
        group = f[f"gt1l/{SEGMENTS_GROUP}"]
        names = sorted(k for k in group if isinstance(group[k], h5py.Dataset))
        assert {"latitude", "h_li", "atl06_quality_summary", "segment_id"} <= set(names)
        assert group["h_li"].shape[0] % group["h_li"].chunks[0] != 0
    for name in names:
        _check(granule, use_fd, monkeypatch, fast=True, name=f"gt1l/{SEGMENTS_GROUP}/{name}")
