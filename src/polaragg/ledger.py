"""Per-task records written by the tasks themselves next to the store (`<store>.ledger/`).

Workers on any executor, Lambda included, cannot talk back to the client, so each task leaves a
small JSON record: which parent cell, status (ok / empty / partial / failed), observations,
granules read and failed with reasons, attempt, seconds, peak memory, executor. `status`,
`validate`, `--resume` and the cost report read these records.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import fsspec

from .fs import fsspec_options

LEDGER_SUFFIX = ".ledger"


@dataclass(frozen=True)
class TaskRecord:
    parent: int
    child_lo: int
    child_hi: int
    status: str
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

    @property
    def key(self) -> str:
        return f"{self.parent:020d}-{self.child_lo:05d}"


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
    fs, root = ledger_location(store_url, storage_options)
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root}/{record.key}.json", "w") as f:
        json.dump(asdict(record), f)


def clear_records(store_url: str, storage_options: dict | None = None) -> None:
    """Remove a store's task records (a fresh, non-resumed run)."""
    fs, root = ledger_location(store_url, storage_options)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def read_records(store_url: str, storage_options: dict | None = None) -> list[TaskRecord]:
    """All task records of a store, sorted by parent cell and child range."""
    fs, root = ledger_location(store_url, storage_options)
    if not fs.exists(root):
        return []
    records = []
    for path in sorted(fs.glob(f"{root}/*.json")):
        with fs.open(path, "r") as f:
            records.append(TaskRecord(**json.load(f)))
    return records
