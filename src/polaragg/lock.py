"""The store-level lock: one run writes a store at a time.

The lock is an object in the store's ledger folder, created with an exclusive write (O_EXCL on a
local disk, `If-None-Match: *` on S3), so it works wherever the store lives. It names its holder
(host, process, start time); a lock left by a process that died on this host is taken over.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import uuid
from dataclasses import dataclass

import psutil

from .ledger import LOCK_NAME, ledger_location


class StoreLocked(RuntimeError):
    """Another run holds the store's lock; the message names it and how to release a stale one."""


@dataclass(frozen=True)
class RunLock:
    store_url: str
    token: str
    storage_options: dict | None = None

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        fs, root = ledger_location(self.store_url, self.storage_options)
        path = f"{root}/{LOCK_NAME}"
        try:
            holder = _read(fs, path)
        except FileNotFoundError:
            return
        if holder.get("token") == self.token:
            fs.rm(path)

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(store_url: str, storage_options: dict | None = None) -> RunLock:
    """Take the store's lock or raise StoreLocked naming the run that holds it."""
    fs, root = ledger_location(store_url, storage_options)
    fs.makedirs(root, exist_ok=True)
    path = f"{root}/{LOCK_NAME}"
    token = uuid.uuid4().hex
    body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": token,
                       "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    for _ in range(2):
        try:
            with fs.open(path, "xb") as f:
                f.write(body.encode())
            return RunLock(store_url, token, storage_options)
        except FileExistsError:
            try:
                holder = _read(fs, path)
            except FileNotFoundError:
                continue  # released meanwhile
            except ValueError:
                holder = {}
            if _is_stale(holder):
                fs.rm(path)
                continue
            raise StoreLocked(_locked_message(store_url, path, holder)) from None
    raise StoreLocked(f"could not take the lock {path}; another run is starting on the same store")


def refuse_if_locked(store_url: str, storage_options: dict | None = None) -> None:
    """Raise StoreLocked if a live run holds the store's lock (creates nothing)."""
    fs, root = ledger_location(store_url, storage_options)
    path = f"{root}/{LOCK_NAME}"
    try:
        holder = _read(fs, path)
    except FileNotFoundError:
        return
    except ValueError:
        holder = {}
    if not _is_stale(holder):
        raise StoreLocked(_locked_message(store_url, path, holder))


def _locked_message(store_url: str, path: str, holder: dict) -> str:
    who = (f"process {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
           if holder else "an unreadable lock")
    return f"{store_url} is being written by another run ({who}); wait for it, or if that run is gone, delete {path}"


def _read(fs, path: str) -> dict:
    with fs.open(path, "rb") as f:
        data = json.loads(f.read().decode())
    return data if isinstance(data, dict) else {}


def _is_stale(holder: dict) -> bool:
    """A lock whose holder was a process on this host that no longer runs."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    if pid == os.getpid():
        return False
    try:
        return not psutil.Process(pid).is_running() or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
