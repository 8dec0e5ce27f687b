"""The store template: what `create_store` writes reads back through zarr as declared."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from polaragg.grid import Grid
from polaragg.schema import OutputSchema
from polaragg.store import StoreError, create_store
from polaragg.timebins import TimeBins


def _bins(n: int) -> TimeBins:
    return TimeBins("edges", tuple(1e7 * i for i in range(n)), tuple(1e7 * (i + 1) for i in range(n)),
                    tuple(f"bin {i}" for i in range(n)))


@pytest.mark.parametrize("chunk", [64, 48])  # 48 leaves a partial edge chunk at every order
def test_template_reads_back_through_zarr(tmp_path, chunk):
    grid = Grid(parent_order=3, child_order=6)
    parents = np.array([5, 6, 300, 301, 700], dtype=np.uint64)
    cell_ids = grid.children_of(parents)
    schema = OutputSchema(n_bins=2)
    pyramid = ((5, 16, OutputSchema(n_bins=2, quantiles=False)), (4, 4, OutputSchema(n_bins=2, quantiles=False)))
    url = str(tmp_path / "t.zarr")
    create_store(url, cell_ids, grid, {"x": 1}, chunk=chunk, schema=schema, bins=_bins(2), pyramid=pyramid)

    root = zarr.open_group(url, mode="r", zarr_format=3)
    assert root.attrs["x"] == 1 and root.attrs["child_order"] == 6
    levels = [(root, cell_ids, chunk, schema)] + [
        (root[str(order)], np.unique(cell_ids >> np.uint64(2 * (6 - order))), c, s) for order, c, s in pyramid]
    for group, ids, c, level_schema in levels:
        stored = group["cell_ids"]
        assert stored.chunks == (c,)
        np.testing.assert_array_equal(stored[:], ids)
        assert stored.dtype == np.uint64
        for spec in level_schema.variables:
            arr = group[spec.name]
            assert arr.shape == (2, ids.size)
            empty = level_schema.empty_value(spec.name)
            values = arr[:]
            if np.isnan(empty):
                assert np.isnan(values).all()
            else:
                assert (values == empty).all()
        assert group["time"].shape == (2,)


def test_template_refuses_an_existing_group(tmp_path):
    grid = Grid(parent_order=3, child_order=5)
    ids = grid.children_of(np.array([1], dtype=np.uint64))
    url = str(tmp_path / "t.zarr")
    create_store(url, ids, grid, {})
    with pytest.raises(StoreError, match="already holds a Zarr group"):
        create_store(url, ids, grid, {})


def test_chunks_written_directly_are_the_bytes_zarr_writes(tmp_path):
    """`write_block` encodes chunks itself; zarr, given the arrays' declared codec, writes the same bytes."""
    from polaragg import store

    import numcodecs

    values = np.round(np.random.default_rng(4).normal(2500.0, 30.0, 4096), 2)  # levels 1 and 3 differ on it
    arr = zarr.create_array(str(tmp_path / "x.zarr"), shape=(4096,), chunks=(4096,), dtype="<f8",
                            compressors=store._COMPRESSOR)
    arr[:] = values
    written = (tmp_path / "x.zarr" / "c" / "0").read_bytes()
    assert written == store._ZSTD.encode(values.tobytes())
    # and the values tell zstd levels apart, so a codec declared at another level would not pass
    assert numcodecs.Zstd(level=1).encode(values.tobytes()) != numcodecs.Zstd(level=3).encode(values.tobytes())
