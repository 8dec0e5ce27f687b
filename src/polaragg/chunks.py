"""Fast reads of whole 1-D HDF5 datasets: the stored chunks, inflated with ISA-L.

ATL06 columns are chunked and deflated (with byte shuffle on integer columns), and inflating them is most of
the CPU time of reading a granule. HDF5 inflates each chunk with zlib inside its filter pipeline; reading the
raw chunks at the addresses of the chunk index and inflating them with ISA-L, which inflates faster than
zlib, into one preallocated array gives the same values for less CPU time. Anything this reader does not
decode itself is read by h5py, so the result is always what ``dset[...]`` returns.
"""

from __future__ import annotations

import os
import zlib
from typing import TYPE_CHECKING

import numpy as np

try:
    from isal import isal_zlib as _inflater
except ImportError:  # pragma: no cover - isal is a declared dependency
    _inflater = zlib

if TYPE_CHECKING:
    import h5py

__all__ = ["INFLATE_ERRORS", "inflate_name", "read_column"]

# What a corrupt deflate stream raises: isal_zlib.error (IsalError) with ISA-L, zlib.error without.
INFLATE_ERRORS: tuple[type[Exception], ...] = (_inflater.error, zlib.error)

_PLAIN_TYPES: dict[np.dtype, h5py.h5t.TypeID] = {}  # numpy dtype -> the HDF5 type h5py creates for it


def inflate_name() -> str:
    """'isal' when chunks are inflated with ISA-L, 'zlib' when with the standard library."""
    return "zlib" if _inflater is zlib else "isal"


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
    dtype = tid.dtype
    if dtype.kind not in "iuf" or dtype.fields is not None or dtype.subdtype is not None:
        return None
    # The stored type must be exactly the plain numpy type (no padding, custom precision or bit order).
    if dtype not in _PLAIN_TYPES:
        _PLAIN_TYPES[dtype] = h5py.h5t.py_create(dtype)
    if not tid.equal(_PLAIN_TYPES[dtype]):
        return None
    return shape[0], dtype, dcpl.get_chunk()[0], shuffled


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
    out = np.empty(n, dtype=dtype)
    out_bytes = out.view(np.uint8).reshape(n, itemsize)
    for info in infos:
        if fd is not None:
            raw = os.pread(fd, info.size, info.byte_offset)
        else:
            mask, raw = dsid.read_direct_chunk(info.chunk_offset)
            if mask != 0:
                return whole()
        data = _inflater.decompress(raw, 15, nbytes)
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
