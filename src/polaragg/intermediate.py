"""The partitions between the granule stage and the cell stage, in a folder or prefix next to the store.

The granule stage writes one object per granule, `<granule>.bin`: its observations sorted by task,
each task's segment its columns one after another (`row_columns`: t float64, h float32, sigma
float32, local cell uint16 or uint32, time bin uint16, and x, y float64 when the change is fitted). Then it writes `<granule>.json`, the granule's record: counts, failure, seconds,
peak memory and the (task, first row, rows) of each segment. The cell stage reads one byte range per
(granule, task). A record names the partition key it was made for (format, layout, grid, filters) and the file it
was read from (URL, and size and modification time for local files); a record that differs in
either is ignored, so a rerun never uses rows of another layout or of a changed file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from .fs import fsspec_options, put_whole

MARKER = "_polaragg_intermediate.json"  # written first: marks the folder as polaragg's to delete
SUFFIX = ".partitions"  # a run's partitions: next to its store (the same folder or bucket)
PARTITION_FORMAT = 2  # bump when the rows or records change meaning
MAX_SEGMENT_ROWS = 2**24 - 1  # index entries hold a segment's rows in 24 bits and its first row in 39


def source_stamp(url: str) -> str:
    """What identifies the file a partition was read from: its URL, plus size and mtime when local."""
    if "://" in url and not url.startswith("file://"):
        return url
    try:
        st = os.stat(url.removeprefix("file://"))
    except OSError:
        return url
    return f"{url}|{st.st_size}|{st.st_mtime_ns}"


def row_dtype(chunk_cells: int) -> np.dtype:
    """Dtype of the local cell index: uint16 when a task's cells fit, else uint32."""
    return np.dtype("<u2") if chunk_cells <= 2**16 else np.dtype("<u4")


def row_columns(chunk_cells: int, with_xy: bool = False) -> tuple[tuple[str, np.dtype], ...]:
    """The columns of a partition row: time, height and sigma as ATL06 stores them, local cell, time
    bin, and (for the change fit) polar stereographic x, y."""
    base = (("t", np.dtype("<f8")), ("h", np.dtype("<f4")), ("sigma", np.dtype("<f4")),
            ("cell", row_dtype(chunk_cells)), ("bin", np.dtype("<u2")))
    return base + ((("x", np.dtype("<f8")), ("y", np.dtype("<f8"))) if with_xy else ())


def row_bytes(columns: tuple[tuple[str, np.dtype], ...]) -> int:
    return sum(dtype.itemsize for _, dtype in columns)


@dataclass(frozen=True)
class GranuleRecord:
    """What the granule stage learnt about one granule."""

    granule: str
    key: str  # the partition key it was made for
    status: str  # "ok" | "failed"
    source: str = ""  # source_stamp of the file it was read from
    rows: int = 0  # rows read
    rows_invalid: int = 0  # without valid coordinates or time
    rows_filtered: int = 0  # valid, dropped by the filters (quality, fill values, sigma <= 0)
    rows_outside: int = 0  # kept, outside every task of the plan
    segments: list[list[int]] = field(default_factory=list)  # [task, first row, rows]
    reason: str = ""
    transient: bool = False
    attempts: int = 0
    seconds: float = 0.0
    # Process CPU while it was partitioned (HEALPix computes in its own thread pool, so thread CPU
    # would miss it): exact where a process runs one task at a time; on threads and dask it also
    # counts the tasks running beside it.
    cpu_seconds: float = 0.0
    peak_memory_bytes: int = 0
    projected_memory_bytes: int = 0

    @property
    def observations(self) -> int:
        return sum(s[2] for s in self.segments)


@dataclass(frozen=True)
class Location:
    """Where one plan's partitions live (a local folder or an fsspec URL) and how to reach it."""

    url: str
    storage_options: dict | None = field(default=None, repr=False)

    def _fs(self) -> tuple[object, str]:
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.url, **fsspec_options(self.url, self.storage_options))
        return fs, root.rstrip("/")

    def create(self) -> None:
        """Make the folder and its marker (idempotent)."""
        fs, root = self._fs()
        fs.makedirs(root, exist_ok=True)
        if not fs.exists(f"{root}/{MARKER}"):
            fs.pipe_file(f"{root}/{MARKER}", json.dumps({"polaragg": "intermediate"}).encode())

    def is_ours(self) -> bool:
        """Absent, or a folder polaragg marked as its own."""
        fs, root = self._fs()
        return not fs.exists(root) or fs.exists(f"{root}/{MARKER}")

    def remove(self) -> None:
        """Delete the folder, only if polaragg made it."""
        fs, root = self._fs()
        if fs.exists(root) and fs.exists(f"{root}/{MARKER}"):
            fs.rm(root, recursive=True)

    def write_rows(self, granule: str, segments: list[list[int]], rows: dict[str, np.ndarray]) -> None:
        """A granule's rows grouped by task, as `segments` ([task, first row, rows]) lay them out (in place
        where new: its record, written after them, says they are whole)."""
        put_whole(f"{self.url.rstrip('/')}/{_safe(granule)}.bin", _encode(segments, rows), self.storage_options,
                  in_place_if_new=True)

    def write_record(self, record: GranuleRecord) -> None:
        """A granule's record, written after its rows: a record means its rows are complete."""
        put_whole(f"{self.url.rstrip('/')}/{_safe(record.granule)}.json", [json.dumps(vars(record)).encode()],
                  self.storage_options)

    def _read(self, name: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of one of the folder's objects. Local folders are read with plain file
        calls: the cell stage reads one range per (granule, task), and fsspec's per-call overhead
        was a fifth of its CPU time."""
        if "://" not in self.url or self.url.startswith("file://"):
            with open(f"{self.url.removeprefix('file://').rstrip('/')}/{name}", "rb") as f:
                f.seek(start)
                return f.read(-1 if end is None else end - start)
        fs, root = self._fs()
        return fs.cat_file(f"{root}/{name}", start=start or None, end=end)

    def record(self, granule: str, key: str, source: str | None = None) -> GranuleRecord | None:
        """The granule's record if one was made for `key` (and from `source`, when given), else None.

        A record that cannot be read (torn by a crash, or of another format) counts as absent.
        """
        try:
            data = json.loads(self._read(f"{_safe(granule)}.json"))
            record = GranuleRecord(**data)
        except (FileNotFoundError, ValueError, TypeError):
            return None
        if record.key != key or (source is not None and record.source != source):
            return None
        return record

    def read_segment(self, granule: str, first: int, rows: int,
                     columns: tuple[tuple[str, np.dtype], ...]) -> dict[str, np.ndarray]:
        """One (granule, task) segment, its `columns` (`row_columns`)."""
        size = row_bytes(columns)
        raw = self._read(f"{_safe(granule)}.bin", first * size, (first + rows) * size)
        if len(raw) != rows * size:
            raise OSError(f"partition of {granule} is truncated ({len(raw)} of {rows * size} bytes)")
        out, pos = {}, 0
        for name, dtype in columns:
            out[name] = np.frombuffer(raw, dtype, count=rows, offset=pos)
            pos += rows * dtype.itemsize
        return out


def _encode(segments: list[list[int]], rows: dict[str, np.ndarray]) -> list[memoryview]:
    """Each segment's columns (in the order of `rows`) one after another, segments in row order (views)."""
    parts = []
    for _, first, n in segments:
        for column in rows.values():
            parts.append(memoryview(np.ascontiguousarray(column[first:first + n])).cast("B"))
    return parts


def _safe(granule: str) -> str:
    """A granule id as an object name (ids are CMR concept ids or file names)."""
    return granule.replace("/", "_")
