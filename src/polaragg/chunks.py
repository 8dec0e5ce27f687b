"""Fast reads of whole 1-D HDF5 datasets: the stored chunks, inflated by the fastest inflater here.

ATL06 columns are chunked and deflated (with byte shuffle on integer columns), and inflating them is most of
the CPU time of reading a granule. HDF5 inflates each chunk with zlib inside its filter pipeline; reading the
raw chunks at the addresses of the chunk index and inflating them with libdeflate or ISA-L, which inflate
faster than zlib, into one preallocated array gives the same values for less CPU time. Anything this reader
does not decode itself is read by h5py, so the result is always what ``dset[...]`` returns.
"""

from __future__ import annotations

import functools
import os
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .fastest import fastest

try:
    import deflate
except ImportError:  # pragma: no cover - deflate is a declared dependency
    deflate = None
try:
    from isal import isal_zlib
except ImportError:  # pragma: no cover - isal is a declared dependency
    isal_zlib = None

if TYPE_CHECKING:
    import h5py

__all__ = ["INFLATE_ERRORS", "inflate_name", "read_column"]

Inflate = Callable[[bytes, int], bytes]  # (zlib stream, its inflated size) -> the inflated bytes

# What a corrupt deflate stream (bad data or checksum) raises with each inflater; libdeflate raises too for a
# stream longer than the chunk, which the others return whole and `read_column` then reads with h5py.
INFLATE_ERRORS: tuple[type[Exception], ...] = tuple(
    e for e in (deflate and deflate.DeflateError, isal_zlib and isal_zlib.error, zlib.error) if e is not None)

# HDF5 type, serialised (H5Tencode) -> its numpy dtype when it is exactly a plain numpy type, else None:
# equal encodings are equal types, and one encode costs a fifth of converting and comparing the type.
_PLAIN_TYPES: dict[bytes, np.dtype | None] = {}


def _inflaters() -> dict[str, Inflate]:
    """Every inflater installed, by name; they return the same bytes for the same stream."""
    found: dict[str, Inflate] = {}
    if deflate is not None:
        found["libdeflate"] = deflate.zlib_decompress
    if isal_zlib is not None:
        found["isal"] = lambda raw, n: isal_zlib.decompress(raw, 15, n)
    found["zlib"] = lambda raw, n: zlib.decompress(raw, 15, n)
    return found


@functools.cache
def _inflater() -> tuple[str, Inflate]:
    """The faster of the installed inflaters on this machine, timed once per process (a few ms); zlib
    only when neither libdeflate nor ISA-L is installed.

    Which one wins depends on the CPU: on an AMD EPYC host libdeflate took 0.44-0.47 s for the demo's
    5,190 chunks and ISA-L 0.49-0.62 s. The probe is two chunks shaped like ATL06 heights (a track
    wandering by centimetres per row, float64), deflated at level 1 as the synthetic granules are.
    """
    found = _inflaters()
    fast = {k: v for k, v in found.items() if k != "zlib"} or found
    if len(fast) == 1:
        return next(iter(fast.items()))
    rows = 10_000
    steps = (np.arange(2 * rows, dtype=np.uint64) * np.uint64(2654435761) % np.uint64(2**32)).astype(np.float64)
    track = 2500.0 + np.cumsum(steps / 2**32 - 0.5) * 0.1
    chunks = [zlib.compress(part.tobytes(), 1) for part in np.split(track, 2)]
    name = fastest({k: (lambda f=f: [f(raw, rows * 8) for raw in chunks]) for k, f in fast.items()})
    return name, fast[name]


def inflate_name() -> str:
    """The inflater chunks are inflated with in this process: 'libdeflate', 'isal' or 'zlib'."""
    return _inflater()[0]


def _fast_layout(dsid: h5py.h5d.DatasetID) -> tuple[int, np.dtype, int, bool] | None:
    """(length, dtype, chunk length, shuffled) when the dataset can be decoded here, else None."""
    import h5py

    dcpl = dsid.get_create_plist()
    if dcpl.get_layout() != h5py.h5d.CHUNKED:
        return None
    shape = dsid.shape
    if shape is None or len(shape) != 1:
        return None
    filters = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
    if filters == [h5py.h5z.FILTER_DEFLATE]:
        shuffled = False
    elif filters == [h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_DEFLATE]:
        shuffled = True
    else:
        return None
    tid = dsid.get_type()
    key = tid.encode()
    if key not in _PLAIN_TYPES:
        _PLAIN_TYPES[key] = _plain_dtype(tid)
    dtype = _PLAIN_TYPES[key]
    if dtype is None:
        return None
    return shape[0], dtype, dcpl.get_chunk()[0], shuffled


def _plain_dtype(tid: h5py.h5t.TypeID) -> np.dtype | None:
    """The numpy dtype of an HDF5 type that is exactly a plain integer or float type (no padding, custom
    precision or bit order), else None."""
    import h5py

    dtype = tid.dtype
    if dtype.kind not in "iuf" or dtype.fields is not None or dtype.subdtype is not None:
        return None
    return dtype if tid.equal(h5py.h5t.py_create(dtype)) else None


def read_column(dset: h5py.Dataset | h5py.h5d.DatasetID, fd: int | None = None) -> np.ndarray:
    """All values of a 1-D dataset, equal to ``dset[...]`` (same values, same dtype).

    Deflated chunks (optionally byte-shuffled) are read raw, with ``os.pread`` on ``fd`` (a descriptor open
    on the dataset's file) when given, else with ``read_direct_chunk`` (any h5py file, file-like ones
    included), and inflated into their slot of the output. Other layouts, filters, dtypes, unwritten chunks
    and chunks HDF5 stored unfiltered are read with ``dset[...]``. A corrupt chunk raises one of
    ``INFLATE_ERRORS``. A low-level ``DatasetID`` is accepted too (opening one costs less than a Dataset).
    """
    import h5py

    dsid = dset.id if isinstance(dset, h5py.Dataset) else dset

    def whole() -> np.ndarray:
        return (dset if isinstance(dset, h5py.Dataset) else h5py.Dataset(dsid))[...]

    layout = _fast_layout(dsid)
    if layout is None:
        return whole()
    n, dtype, chunk_len, shuffled = layout
    if n == 0:
        return np.empty(0, dtype=dtype)
    infos: list[h5py.h5d.StoreInfo] = []
    dsid.chunk_iter(infos.append)
    if len(infos) != -(-n // chunk_len) or any(
        i.filter_mask != 0 or i.chunk_offset[0] % chunk_len or i.chunk_offset[0] >= n for i in infos
    ):
        return whole()
    itemsize = dtype.itemsize
    nbytes = chunk_len * itemsize
    inflate = _inflater()[1]
    out = np.empty(n, dtype=dtype)
    out_bytes = out.view(np.uint8).reshape(n, itemsize)
    for info in infos:
        if fd is not None:
            raw = os.pread(fd, info.size, info.byte_offset)
        else:
            mask, raw = dsid.read_direct_chunk(info.chunk_offset)
            if mask != 0:
                return whole()
        data = inflate(raw, nbytes)
        if len(data) != nbytes:
            return whole()
        start = info.chunk_offset[0]
        count = min(chunk_len, n - start)
        if shuffled:
            planes = np.frombuffer(data, dtype=np.uint8).reshape(itemsize, chunk_len)
            out_bytes[start : start + count] = planes[:, :count].T
        else:
            out[start : start + count] = np.frombuffer(data, dtype=dtype, count=count)
    return out
