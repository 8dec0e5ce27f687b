"""The output Zarr v3 store: template, whole-chunk writes by tasks, and opening it with xarray.

Layout: one group; dimensions `time` and `cells`; coordinates `cell_ids` (uint64 nested ids at the
child order, xdggs attrs) and `time` (CF, with `time_bounds`); one array per variable of the
schema, (time, cells) per bin or (cells) per cell, chunked one bin and one task per chunk. Each task writes exactly
its own chunk of every array (one writer per chunk, no read-modify-write), so tasks on any executor
can write concurrently, locally or on S3.

Every array is created with the same codecs (little-endian bytes, then zstd) and default chunk keys,
so a task encodes its chunks itself and writes each as one object (`write_block`), without the
per-call cost of fifteen `zarr` array writes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import warnings
from pathlib import Path
from typing import Literal

import numcodecs
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BytesCodec, ZstdCodec

from .domain import POLARAGG_VERSION
from .grid import Grid
from .fs import fsspec_options, put_whole
from .ledger import LEDGER_SUFFIX, clear_records, foreign_ledger_files
from .schema import OutputSchema, block_columns, time_coordinates, variable_attrs


# zstd level 1: a one-cycle run's 512 statistics chunks encode in 42 ms against 54 ms at the default
# level 3, for 0.8 % more bytes (3.57 against 3.54 MB of 16.8).
_COMPRESSOR = ZstdCodec(level=1)
_ZSTD = numcodecs.Zstd(level=1)  # the same zstd frames as _COMPRESSOR writes

# Root attributes every store written by polaragg carries; a folder without them is not ours.
MARKER_ATTRS = ("polaragg_version", "recipe_fingerprint")

TargetState = Literal["absent", "empty", "polaragg"]


class StoreError(RuntimeError):
    """A store path polaragg refuses to write, or a store it cannot use; the message names the path."""


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def inspect_target(url: str, storage_options: dict | None = None) -> TargetState:
    """What is at a store path, refusing anything polaragg must not write over.

    Refused: an empty path, the current folder or any folder above it, the home folder, a whole
    bucket, a file, and any existing non-empty folder (or prefix) that is not a polaragg store;
    likewise a ledger folder holding files polaragg did not write.
    """
    if not url or not url.strip():
        raise StoreError("the output store path is empty; give a new path such as polaragg-out/run.zarr")
    if is_remote(url):
        state = _inspect_remote(url, storage_options)
    else:
        state = _inspect_local(Path(url.removeprefix("file://")).expanduser())
    foreign = foreign_ledger_files(url, storage_options)
    if foreign:
        raise StoreError(f"{url}{LEDGER_SUFFIX} holds files polaragg did not write ({', '.join(foreign[:3])}); "
                         "choose another store path")
    return state


def _inspect_local(path: Path) -> TargetState:
    resolved = path.resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if resolved == cwd or cwd.is_relative_to(resolved):
        raise StoreError(f"refusing to use {str(path)!r} as a store: it is the current folder or one above it; "
                         "give a new path such as polaragg-out/run.zarr")
    if resolved == home or home.is_relative_to(resolved):
        raise StoreError(f"refusing to use {str(path)!r} as a store: it is the home folder or one above it")
    if not resolved.exists():
        return "absent"
    if not resolved.is_dir():
        raise StoreError(f"{path} exists and is not a folder; choose a new store path")
    if not any(resolved.iterdir()):
        return "empty"
    if _is_polaragg_attrs(_read_json(resolved / "zarr.json")):
        return "polaragg"
    raise StoreError(f"{path} exists and is not a polaragg store; polaragg never writes over other files: "
                     "choose a new store path")


def _inspect_remote(url: str, storage_options: dict | None) -> TargetState:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **fsspec_options(url, storage_options))
    root = root.rstrip("/")
    if "/" not in root:
        raise StoreError(f"refusing to use the whole bucket {url!r} as a store; give a prefix such as "
                         f"{url.rstrip('/')}/run.zarr")
    bucket = root.split("/", 1)[0]
    try:
        fs.info(bucket)
    except FileNotFoundError:
        raise StoreError(f"bucket {bucket!r} does not exist (store {url})") from None
    except PermissionError:
        raise StoreError(f"access to bucket {bucket!r} was denied: check the S3 credentials (store {url})") from None
    if fs.isfile(root):
        raise StoreError(f"{url} is an existing object, not a folder; choose a new store path")
    if not fs.exists(root):
        return "absent"
    try:
        with fs.open(f"{root}/zarr.json", "rb") as f:
            attrs = json.load(f).get("attributes", {})
    except (FileNotFoundError, ValueError):
        attrs = {}
    if _is_polaragg_attrs(attrs):
        return "polaragg"
    raise StoreError(f"{url} holds objects that are not a polaragg store; choose a new store path")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return {}


def _is_polaragg_attrs(attrs: object) -> bool:
    return isinstance(attrs, dict) and all(k in attrs for k in MARKER_ATTRS)


def remove_store(url: str, storage_options: dict | None = None) -> None:
    """Delete a polaragg store and its task records; refuses anything that is not one."""
    if inspect_target(url, storage_options) != "polaragg":
        raise StoreError(f"{url} is not a polaragg store; nothing removed")
    if is_remote(url):
        import fsspec

        fs, root = fsspec.core.url_to_fs(url, **fsspec_options(url, storage_options))
        fs.rm(root.rstrip("/"), recursive=True)
    else:
        import shutil

        shutil.rmtree(Path(url.removeprefix("file://")).expanduser())
    clear_records(url, storage_options)


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
    chunk: int | None = None,
    schema: OutputSchema = OutputSchema(),
    bins=None,
    pyramid: tuple[tuple[int, int, OutputSchema], ...] = (),
    time_chunk: int = 0,
) -> None:
    """Write the empty template: every variable at its empty value, chunked one task per chunk.

    The root group is the child order. Per-bin variables are (time, cells) in chunks of `time_chunk` bins
    (default: all of them; appended bins go to new chunks past those); per-cell ones (cells). `time` (bin centres) and
    `time_bounds` are CF-encoded seconds since 2018-01-01. The chunk is one parent's children unless
    the plan split parents to bound task memory. `pyramid` adds a group per coarser order, named by
    the order: (order, cells per chunk, its schema), and the root's `multiscales` layout lists them.
    The path must hold nothing (see `inspect_target`; `remove_store` clears an old polaragg store first).
    """
    from .timebins import TimeBins

    chunk = chunk or grid.children_per_parent
    bins = bins or TimeBins("edges", (0.0,), (0.0,), ("all",))
    if bins.n != schema.n_bins:
        raise ValueError(f"{bins.n} time bins but a schema of {schema.n_bins}")
    if _has_root(url, storage_options):
        raise StoreError(f"{url} already holds a Zarr group; create_store writes only into an empty path")
    template: dict = {}  # key -> zarr Buffer: the template is made in memory and written in one batch
    root = zarr.open_group(zarr.storage.MemoryStore(template), mode="w-", zarr_format=3, attributes={
        **attrs,
        "polaragg_version": POLARAGG_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "parent_order": grid.parent_order,
        "child_order": grid.child_order,
        **(multiscales_attrs(grid.child_order, [order for order, _, _ in pyramid]) if pyramid else {}),
    })
    tc = time_chunk or schema.n_bins
    objects: dict[str, bytes] = {}
    _create_level(root, cell_ids, chunk, schema, bins, grid.cell_id_attrs(), tc, objects)
    for order, level_chunk, level_schema in pyramid:
        shift = np.uint64(2 * (grid.child_order - order))
        ids = np.unique(cell_ids >> shift)
        group = root.create_group(str(order), attributes={
            "order": order, "quantiles": "exact, from the observations" if level_schema.quantiles else
            "absent: this order is merged from the sufficient statistics of finer orders, and exact quantiles "
            "need the observations themselves"})
        _create_level(group, ids, level_chunk, level_schema, bins, {**grid.cell_id_attrs(), "level": order}, tc,
                      objects)
    _write_objects(url, {**{key: buf.to_bytes() for key, buf in template.items()}, **objects}, storage_options)


def _has_root(url: str, storage_options: dict | None) -> bool:
    if not is_remote(url):
        return (Path(url.removeprefix("file://")).expanduser() / "zarr.json").exists()
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **fsspec_options(url, storage_options))
    return fs.exists(f"{root.rstrip('/')}/zarr.json")


def _write_objects(url: str, objects: dict[str, bytes], storage_options: dict | None) -> None:
    """Write a store's objects (key -> bytes), the root group's metadata first: a store cut short while being
    made is still recognisably polaragg's, so the next run into it removes it.

    zarr's own store writes cost ~5 ms a node here (0.1 s for the one-cycle template); local files are
    written whole with plain file calls, objects in one batch of PUTs."""
    keys = sorted(objects, key=lambda k: (k != "zarr.json", k))
    base = url.rstrip("/")
    if not is_remote(url):
        for key in keys:
            put_whole(f"{base}/{key}", [objects[key]])
        return
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **fsspec_options(url, storage_options))
    root = root.rstrip("/")
    fs.pipe_file(f"{root}/zarr.json", objects["zarr.json"])
    fs.pipe({f"{root}/{key}": objects[key] for key in keys[1:]})


REFITTED = ("dh", "dh_sigma")  # per-bin variables that depend on every bin (through the fit)


def multiscales_attrs(child_order: int, orders: list[int]) -> dict:
    """The zarr-conventions `multiscales` layout: the root group (".", the child order) and one child group per
    coarser order, each derived from the next finer one (the cell edge doubles per order)."""
    layout = [{"asset": ".", "order": child_order, "transform": {"scale": [1.0]}}]
    finer = "."
    for order in orders:
        layout.append({"asset": str(order), "order": order, "derived_from": finer,
                       "transform": {"scale": [float(2 ** (child_order - order))]},
                       "resampling_method": "sufficient statistics"})
        finer = str(order)
    return {
        "zarr_conventions": [{
            "uuid": "d35379db-88df-4056-af3a-620245f8e347", "name": "multiscales",
            "schema_url": "https://raw.githubusercontent.com/zarr-conventions/multiscales/refs/tags/v1/schema.json",
            "spec_url": "https://github.com/zarr-conventions/multiscales/blob/v1/README.md",
            "description": "Multiscale layout of zarr datasets"}],
        "multiscales": {"layout": layout, "resampling_method": "sufficient statistics"},
    }


def _create_level(root: zarr.Group, cell_ids: np.ndarray, chunk: int, schema: OutputSchema, bins,
                  cell_attrs: dict, time_chunk: int, objects: dict[str, bytes]) -> None:
    """Create one order's arrays in `root`; the chunks of `cell_ids` go into `objects` (key -> encoded
    chunk), encoded here as its codecs declare, like `write_block`'s (zarr's writes cost ~1 ms a chunk)."""
    ids = root.create_array(
        "cell_ids", shape=cell_ids.shape, chunks=(chunk,), dtype="uint64", fill_value=0,
        dimension_names=["cells"], attributes=cell_attrs, serializer=BytesCodec(endian="little"),
        compressors=_COMPRESSOR,
    )
    padded = np.zeros(-(-cell_ids.size // chunk) * chunk, dtype="<u8")  # edge chunks are whole, fill 0
    padded[:cell_ids.size] = cell_ids
    for i in range(padded.size // chunk):
        objects[f"{ids.path}/{ids.metadata.encode_chunk_key((i,))}"] = _ZSTD.encode(padded[i * chunk:(i + 1) * chunk])
    centres, bounds, time_attrs = time_coordinates(bins)
    time = root.create_array("time", shape=centres.shape, chunks=(max(1, centres.size),), dtype="float64",
                             fill_value=np.nan, dimension_names=["time"], attributes=time_attrs)
    time[:] = centres
    tb = root.create_array("time_bounds", shape=bounds.shape, chunks=bounds.shape, dtype="float64",
                           fill_value=np.nan, dimension_names=["time", "nv"],
                           attributes={"units": time_attrs["units"], "calendar": time_attrs["calendar"]})
    tb[:] = bounds
    n = cell_ids.shape[0]
    for spec in schema.variables:
        per_bin = schema.is_per_bin(spec.name)
        arr = root.create_array(
            spec.name, shape=(schema.n_bins, n) if per_bin else (n,), chunks=(time_chunk, chunk) if per_bin else (chunk,),
            dtype=spec.dtype, fill_value=_fill(schema, spec),
            dimension_names=["time", "cells"] if per_bin else ["cells"], serializer=BytesCodec(endian="little"),
            compressors=_COMPRESSOR,
            attributes={**variable_attrs(spec, schema),
                        "coordinates": "cell_ids time_bounds" if per_bin else "cell_ids"},
        )
        expected = "c/0/1" if per_bin else "c/1"
        if arr.metadata.encode_chunk_key((0, 1) if per_bin else (1,)) != expected:
            raise StoreError(f"unexpected chunk key encoding of {spec.name}: write_block writes keys {expected}")


def _fill(schema: OutputSchema, spec) -> float | int:
    value = schema.empty_value(spec.name)
    if np.dtype(spec.dtype).kind in "iu":
        return 0 if np.isnan(value) else int(value)
    return value


def checksum(columns: dict[str, np.ndarray], schema: OutputSchema = OutputSchema()) -> str:
    """Digest of a chunk's stored values over every variable, in schema order."""
    digest = hashlib.sha256()
    for spec in schema.variables:
        digest.update(np.ascontiguousarray(columns[spec.name], dtype=spec.dtype).tobytes())
    return digest.hexdigest()[:32]


def write_block(
    url: str, start: int, block: np.ndarray, *, storage_options: dict | None = None,
    schema: OutputSchema = OutputSchema(), group: str | None = None, bins_from: int = 0, time_chunk: int = 0,
) -> str:
    """Write a task's (cells x columns) block as chunk `start // len(block)` of every array; return its
    checksum.

    The chunks are encoded as `create_store` declared them (little-endian bytes, zstd), each written in
    one call (in place where new: the task's ledger record, written after them, says they are whole):
    per-bin variables in chunks of `time_chunk` bins (default: all), padded with the fill value past the
    last bin. Every chunk is written, empty ones too, so the same files exist whichever executor ran the
    task. `bins_from` (appending) skips chunks of earlier bins only, except for the
    anomalies, which the new fit changes.
    """
    n = block.shape[0]
    if n == 0 or start % n:
        raise ValueError(f"a block of {n} cells at {start} is not one whole chunk")
    columns = block_columns(block, schema)
    base, i = url.rstrip("/") + (f"/{group}" if group else ""), start // n
    for name, values in columns.items():
        le = values.dtype.newbyteorder("<")
        if values.ndim == 2:
            tc = time_chunk or values.shape[0]
            fill = _fill(schema, next(s for s in schema.variables if s.name == name))
            for r in range(-(-values.shape[0] // tc)):
                if (r + 1) * tc <= bins_from and name not in REFITTED:
                    continue  # appending: earlier bins hold what they held
                rows = values[r * tc:(r + 1) * tc]
                if rows.shape[0] < tc:
                    rows = np.concatenate([rows, np.full((tc - rows.shape[0], n), fill, rows.dtype)])
                put_whole(f"{base}/{name}/c/{r}/{i}", [_ZSTD.encode(np.ascontiguousarray(rows, dtype=le))],
                          storage_options, in_place_if_new=True)
        else:
            put_whole(f"{base}/{name}/c/{i}", [_ZSTD.encode(np.ascontiguousarray(values, dtype=le))], storage_options,
                      in_place_if_new=True)
    return checksum(columns, schema)


def schema_of(root: zarr.Group) -> OutputSchema:
    """The schema a store was written with: its number of time bins, and whether it holds the fit."""
    names = set(root.array_keys())
    return OutputSchema(int(root["time"].shape[0]) if "time" in names else 1, "dhdt" in names)


def read_chunk(url: str, group: str | None, start: int, n: int, schema: OutputSchema, n_bins: int,
               storage_options: dict | None = None) -> dict[str, np.ndarray]:
    """The first `n_bins` bins of every per-bin variable of cells [start, start + n) of one order's group."""
    root = zarr.open_group(zarr_store(url, storage_options), mode="r", zarr_format=3)
    level = root[group] if group else root
    return {spec.name: level[spec.name][:n_bins, start:start + n] for spec in schema.per_bin}


def combine_checksums(digests: list[str]) -> str:
    """One checksum of a task's chunks at every order (the child order's alone when there is one)."""
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256(":".join(digests).encode()).hexdigest()[:32]


def read_checksum(root: zarr.Group, start: int, stop: int, schema: OutputSchema = OutputSchema()) -> str:
    """Checksum of the stored values of cells [start, stop) (as `write_block` computed it)."""
    return checksum({spec.name: (root[spec.name][:, start:stop] if schema.is_per_bin(spec.name)
                                 else root[spec.name][start:stop]) for spec in schema.variables}, schema)


def finalize_store(url: str, attrs: dict, *, storage_options: dict | None = None, drop: tuple[str, ...] = ()) -> None:
    """Add the run's attributes (removing those named in `drop`) and consolidate metadata, as xarray's own
    `to_zarr` does."""
    store = zarr_store(url, storage_options)
    root = zarr.open_group(store, mode="r+", zarr_format=3)
    root.attrs.update(attrs)
    for key in drop:
        if key in root.attrs:
            del root.attrs[key]
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
