"""Per-task records written by the tasks themselves next to the store (`<store>.ledger/`).

Workers on any executor, Lambda included, cannot talk back to the client, so each task leaves a
small JSON record: which parent cell, status (ok / empty / partial / failed), observations, rows
filtered and invalid, the granules it read and those that failed with reasons, rows it saw that
belong to other tasks whose granule lists lack the granule (footprint misses), attempt, seconds,
peak memory, executor and a checksum of the chunk it wrote. `status`, `validate`, `--resume` and
the cost report read these records. The folder also holds the run's lock and its list of inputs.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Literal

import fsspec

from .fs import fsspec_options, put_whole

LEDGER_SUFFIX = ".ledger"
LOCK_NAME = "_run.lock"
INPUTS_NAME = "_inputs.jsonl"
_RECORD_NAME = re.compile(r"^\d{20}-\d{5}\.json$")

TaskStatus = Literal["ok", "empty", "partial", "failed"]


class LedgerError(ValueError):
    """A ledger file that polaragg did not write or cannot read; the message names the file."""


@dataclass(frozen=True)
class TaskRecord:
    parent: int
    child_lo: int
    child_hi: int
    status: TaskStatus
    observations: int
    rows_in_cell: int
    granules: int
    granules_read: int
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    peak_memory_bytes: int = 0
    attempt: int = 1
    executor: str = ""
    fingerprint: str = ""
    # Sums over the granules this task reports (`granule_reports`): each granule is reported by one task.
    rows_filtered: int = 0  # valid rows dropped by the filters (quality, fill values, sigma <= 0)
    rows_invalid: int = 0  # rows without valid coordinates or time
    rows_outside: int = 0  # kept rows outside every task of the plan
    granule_ids: list[str] = field(default_factory=list)  # granules read completely: listed ones, and any with rows here
    # Rows of a reported granule in tasks its footprint did not list (routed there all the same).
    footprint_misses: list[dict] = field(default_factory=list)  # {granule, parent, child_lo, rows}
    checksum: str = ""  # of the chunk written (store.checksum)
    projected_memory_bytes: int = 0
    run_id: str = ""
    granule_reports: list[dict] = field(default_factory=list)  # granule-stage records of the granules reported
    granule_seconds: float = 0.0  # granule-stage seconds of the granules reported
    # Process CPU while the task ran (reduce, chunk write), and the granule stage's for the granules
    # reported: exact where a process runs one task at a time (single-threaded, processes, Lambda);
    # on threads and dask they also count the tasks running beside.
    cpu_seconds: float = 0.0
    granule_cpu_seconds: float = 0.0
    segments: int | None = None  # (granule, task) segments of the partitions read (None: not recorded)
    cells_with_data: int | None = None  # child cells of its chunk with observations in any bin (None: not recorded)

    @property
    def key(self) -> str:
        return f"{self.parent:020d}-{self.child_lo:05d}"


_FIELDS = {f.name for f in fields(TaskRecord)}
_REQUIRED = {f.name for f in fields(TaskRecord) if f.default is MISSING and f.default_factory is MISSING}


def ledger_location(store_url: str, storage_options: dict | None = None):
    """The filesystem and folder holding a store's task records.

    Object stores are configured from the environment like every other S3 client here (the
    credentials chain, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, which botocore honours); nothing
    about them is written into the records. Their listings are never cached: records are written
    by other threads, processes or machines, and a cached listing would hide them from `status`,
    progress and the final summary.
    """
    options = fsspec_options(store_url, storage_options)
    if "://" in store_url and not store_url.startswith("file://"):
        options.setdefault("use_listings_cache", False)
    fs, root = fsspec.core.url_to_fs(store_url, **options)
    return fs, root.rstrip("/") + LEDGER_SUFFIX


def write_record(store_url: str, record: TaskRecord, storage_options: dict | None = None) -> None:
    """Write a task's record whole or not at all (a crash never leaves a torn record)."""
    put_whole(f"{store_url.rstrip('/')}{LEDGER_SUFFIX}/{record.key}.json", [json.dumps(vars(record)).encode()],
              storage_options)


def _names(fs, root: str) -> list[str]:
    if not fs.exists(root):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))


def foreign_ledger_files(store_url: str, storage_options: dict | None = None) -> list[str]:
    """Names in the ledger folder that polaragg did not write (records, lock, inputs)."""
    fs, root = ledger_location(store_url, storage_options)
    if fs.exists(root) and not fs.isdir(root):
        return [root.rsplit("/", 1)[-1]]
    return [n for n in _names(fs, root) if not (_RECORD_NAME.match(n) or n in (LOCK_NAME, INPUTS_NAME))]


def clear_records(store_url: str, storage_options: dict | None = None) -> None:
    """Remove a store's task records and inputs list (the lock stays with its holder)."""
    fs, root = ledger_location(store_url, storage_options)
    for name in _names(fs, root):
        if _RECORD_NAME.match(name) or name == INPUTS_NAME:
            fs.rm(f"{root}/{name}")
    if fs.exists(root) and not _names(fs, root):
        fs.rm(root, recursive=True)


def read_records(store_url: str, storage_options: dict | None = None) -> list[TaskRecord]:
    """All task records of a store, sorted by parent cell and child range.

    A record that is not valid JSON or not a polaragg task record raises LedgerError naming it.
    """
    fs, root = ledger_location(store_url, storage_options)
    records = []
    for name in _names(fs, root):
        if not name.endswith(".json"):
            continue
        path = f"{root}/{name}"
        if not _RECORD_NAME.match(name):
            raise LedgerError(f"{path}: not a polaragg task record (unexpected file name)")
        try:
            with fs.open(path, "r") as f:
                data = json.load(f)
        except ValueError as exc:
            raise LedgerError(f"{path}: not valid JSON ({exc})") from None
        records.append(_record(path, data))
    return records


def _record(path: str, data: object) -> TaskRecord:
    if not isinstance(data, dict):
        raise LedgerError(f"{path}: not a polaragg task record (not a JSON object)")
    missing = sorted(_REQUIRED - data.keys())
    unknown = sorted(data.keys() - _FIELDS)
    if missing or unknown:
        what = "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                       unknown and f"unknown {', '.join(unknown)}"]))
        raise LedgerError(f"{path}: not a polaragg task record ({what})")
    record = TaskRecord(**data)
    if record.status not in ("ok", "empty", "partial", "failed") or not isinstance(record.parent, int):
        raise LedgerError(f"{path}: not a polaragg task record (status {record.status!r})")
    return record


def write_inputs(store_url: str, inputs: list[dict], storage_options: dict | None = None) -> None:
    """The run's inputs (granule names and sizes), one JSON object a line, for `--resume` to compare."""
    fs, root = ledger_location(store_url, storage_options)
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root}/{INPUTS_NAME}", "w") as f:
        f.write("".join(json.dumps(i, sort_keys=True) + "\n" for i in inputs))


def read_inputs(store_url: str, storage_options: dict | None = None) -> list[dict] | None:
    """The inputs recorded when the store was made, or None when none were recorded."""
    fs, root = ledger_location(store_url, storage_options)
    path = f"{root}/{INPUTS_NAME}"
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        try:
            return [json.loads(line) for line in f.read().splitlines() if line.strip()]
        except ValueError as exc:
            raise LedgerError(f"{path}: not valid JSON lines ({exc})") from None
