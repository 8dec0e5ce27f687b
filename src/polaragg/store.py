"""The output Zarr v3 store: template, whole-chunk writes by tasks, and opening it with xarray.

Layout: one group; dimension `cells`; coordinate `cell_ids` (uint64 nested ids at the child order,
xdggs attrs); one array per statistic, chunked one parent cell per chunk. Each task writes exactly
its own chunk of every array (one writer per chunk, no read-modify-write), so tasks on any executor
can write concurrently, locally or on S3.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import xarray as xr
import zarr

from .grid import Grid
from .fs import fsspec_options
from .ledger import clear_records
from .stats import STAT_INDEX, STATS, ZERO_WHEN_EMPTY

try:
    POLARAGG_VERSION = version("polaragg")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    POLARAGG_VERSION = "0+unknown"


def zarr_store(url: str, storage_options: dict | None = None):
    """A zarr store object for a local path or an fsspec URL (s3://...).

    S3 is configured from the environment (credentials chain, AWS_ENDPOINT_URL_S3 /
    AWS_ENDPOINT_URL); nothing about the connection is written into the store.
    """
    if "://" in url and not url.startswith("file://"):
        options = fsspec_options(url, storage_options)
        return zarr.storage.FsspecStore.from_url(url, storage_options=options, read_only=False)
    return zarr.storage.LocalStore(url.removeprefix("file://"))


def create_store(
    url: str,
    cell_ids: np.ndarray,
    grid: Grid,
    attrs: dict,
    *,
    storage_options: dict | None = None,
    overwrite: bool = True,
    chunk: int | None = None,
) -> None:
    """Write the empty template: every statistic at its empty value, chunked one task per chunk.

    The chunk is one parent's children unless the plan split parents to bound task memory.
    """
    chunk = chunk or grid.children_per_parent
    if overwrite:
        clear_records(url, storage_options)
    root = zarr.open_group(zarr_store(url, storage_options), mode="w" if overwrite else "w-", zarr_format=3)
    root.attrs.update(
        {
            **attrs,
            "polaragg_version": POLARAGG_VERSION,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "parent_order": grid.parent_order,
            "child_order": grid.child_order,
        }
    )
    ids = root.create_array(
        "cell_ids", shape=cell_ids.shape, chunks=(chunk,), dtype="uint64", fill_value=0,
        dimension_names=["cells"], attributes=grid.cell_id_attrs(),
    )
    ids[:] = cell_ids
    for spec in STATS:
        root.create_array(
            spec.name, shape=cell_ids.shape, chunks=(chunk,), dtype=spec.dtype,
            fill_value=0 if spec.name in ZERO_WHEN_EMPTY else np.nan,
            dimension_names=["cells"],
            attributes={"units": spec.units, "long_name": spec.long_name, "coordinates": "cell_ids"},
        )


def write_block(
    url: str, start: int, block: np.ndarray, *, storage_options: dict | None = None
) -> None:
    """Write a task's (cells x statistics) block at cells [start, start + len(block))."""
    root = zarr.open_group(zarr_store(url, storage_options), mode="r+", zarr_format=3)
    stop = start + block.shape[0]
    for spec in STATS:
        column = block[:, STAT_INDEX[spec.name]]
        root[spec.name][start:stop] = column.astype(spec.dtype)


def finalize_store(url: str, attrs: dict, *, storage_options: dict | None = None) -> None:
    """Add the run's attributes and consolidate metadata, as xarray's own `to_zarr` does."""
    store = zarr_store(url, storage_options)
    root = zarr.open_group(store, mode="r+", zarr_format=3)
    root.attrs.update(attrs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(store)


def open_store(url: str, *, storage_options: dict | None = None) -> xr.Dataset:
    """Open an output store as an xarray Dataset (lazy), with `cell_ids` as coordinate."""
    store = zarr_store(url, storage_options)
    try:
        return xr.open_zarr(store, consolidated=True, zarr_format=3)
    except (KeyError, ValueError, FileNotFoundError):  # a store written without consolidated metadata
        return xr.open_zarr(store, consolidated=False, zarr_format=3)


def recipe_attrs(recipe_json: dict, fingerprint: str) -> dict:
    """Root attributes recording what produced the store (recipes carry no credentials)."""
    return {"recipe": json.dumps(recipe_json, sort_keys=True), "recipe_fingerprint": fingerprint}
