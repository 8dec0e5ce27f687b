"""Preflight: what a run needs from the outside world, checked in seconds before anything is created.

`polaragg run` runs these checks after planning and before it takes the store's lock; `polaragg check
RECIPE` runs only them and prints each. Every failure is one line naming what to fix:

- credentials: each set the run needs (`recipe.credentials`) was obtained and does not expire within
  its refresh margin;
- store and work_dir: writable (an S3 prefix gets a probe object, deleted at once; a folder's nearest
  existing parent must be a writable folder);
- executor: the cloud service answers (Lambda endpoint and role, Coiled API and token); a Dask scheduler
  answers, its workers run the client's Python and packages and have at least a task's memory; the
  Lambda memory holds a task;
- limits: the open-file limit covers the executor's concurrent connections; Lambda's concurrency.
"""

from __future__ import annotations

import os
import resource
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Literal

from .credentials import RunCredentials
from .domain import ExecutorChoice
from .recipe import Recipe

Status = Literal["ok", "warning", "failed"]

SCHEDULER_TIMEOUT_S = 5.0
# Packages whose versions must match between the client and the workers that unpickle its tasks.
MATCHED_PACKAGES = ("polaragg", "numpy", "pandas", "xarray", "zarr", "cubed", "dask", "distributed", "h5py", "h5coro",
                    "s3fs", "fsspec", "cloudpickle")
FILES_PER_WORKER = 48  # sockets and files a worker may hold open at once (S3 pools, granules, chunks)
FILES_BASE = 256
LAMBDA_DEFAULT_CONCURRENCY = 1000  # an AWS account's default concurrent executions per region


class PreflightError(RuntimeError):
    """A preflight check failed (the message is the one line naming what to fix)."""


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str

    def format(self) -> str:
        mark = {"ok": "ok  ", "warning": "warn", "failed": "FAIL"}[self.status]
        return f"[{mark}] {self.name}: {self.detail}"


def preflight(recipe: Recipe, store: str, choice: ExecutorChoice, credentials: RunCredentials,
              *, needs_granules: bool) -> list[Check]:
    """Every check, in order (cheap local ones first); a check that raises counts as failed."""
    checks: list[tuple[str, Callable[[], tuple[Status, str]]]] = []
    for which in ("granules", "store"):
        if which == "store" or needs_granules:
            checks.append((f"credentials.{which}", lambda w=which: _credentials(recipe, credentials, w)))
    checks.append(("store", lambda: _writable(store, credentials)))
    if recipe.executor.work_dir:
        checks.append(("executor.work_dir", lambda: _writable(recipe.executor.work_dir, credentials, inside=True)))
    checks.append(("open files", lambda: _open_files(choice)))
    checks.append((f"executor {choice.name}", lambda: _executor(choice)))
    return [_checked(name, check, credentials) for name, check in checks]


def credentials_check(recipe: Recipe, credentials: RunCredentials, which: str) -> Check:
    """The check of one credential set alone (a run makes it before it first uses the set)."""
    return _checked(f"credentials.{which}", lambda: _credentials(recipe, credentials, which), credentials)


def _checked(name: str, check: Callable[[], tuple[Status, str]], credentials: RunCredentials) -> Check:
    try:
        status, detail = check()
    except Exception as exc:  # noqa: BLE001 - every failure becomes the check's one line
        status, detail = "failed", credentials.redact(_one_line(exc))
    return Check(name, status, detail)


def require(checks: list[Check]) -> None:
    """Raise PreflightError with the first failed check's line."""
    for check in checks:
        if check.status == "failed":
            raise PreflightError(f"preflight: {check.name}: {check.detail}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ------------------------------------------------------------------------------------------------


def _credentials(recipe: Recipe, credentials: RunCredentials, which: str) -> tuple[Status, str]:
    config = getattr(recipe.credentials, which)
    held = getattr(credentials, which)
    if held is None:
        how = {"worker": "each worker's own identity", "anonymous": "unsigned requests",
               "client": "not needed (no S3 URL)", "earthdata": "not needed (no S3 URL)"}[config.source]
        return "ok", f"{config.source}: {how}"
    from .credentials import credentials_expiry

    expires = credentials_expiry(held.current())
    if expires is None:
        return "ok", f"{config.source}: obtained (no expiry)"
    left = expires - time.time()
    if left <= 0:
        raise PreflightError(f"the {config.source} credentials obtained are already expired; check the clock and "
                             f"the credentials source{' (' + config.endpoint_url + ')' if config.source == 'earthdata' else ''}")
    if left <= config.refresh_margin_s:
        raise PreflightError(f"the {config.source} credentials obtained expire in {left:.0f} s, within "
                             f"refresh_margin_s = {config.refresh_margin_s:g} s: lower credentials.{which}."
                             "refresh_margin_s or use longer-lived credentials")
    return "ok", f"{config.source}: obtained, valid {left:.0f} s more (renewed {config.refresh_margin_s:g} s before)"


def _writable(url: str, credentials: RunCredentials, inside: bool = False) -> tuple[Status, str]:
    """`inside`: the run writes under the prefix (a work_dir), else beside it (a store and its ledger)."""
    if url.startswith(("s3://", "s3a://")):
        import fsspec

        from .fs import fsspec_options

        options = credentials.options(url, "store")
        fs, path = fsspec.core.url_to_fs(url, **fsspec_options(url, options))
        name = f"polaragg-preflight-{uuid.uuid4().hex[:12]}"
        probe = f"{path.rstrip('/')}/{name}" if inside or "/" not in path.strip("/") else \
            f"{path.rstrip('/')}.{name}"
        written = False
        try:
            fs.pipe_file(probe, b"")
            written = True
        except Exception as exc:  # noqa: BLE001
            raise PreflightError(f"{url} is not writable ({type(exc).__name__}: {_one_line(exc)}); check the bucket "
                                 "name and that the store's credentials may write there") from None
        finally:
            try:
                fs.rm_file(probe)
            except FileNotFoundError:
                pass
            except Exception as exc:  # noqa: BLE001
                if written:
                    raise PreflightError(f"the probe object s3://{probe} was written but cannot be deleted "
                                         f"({type(exc).__name__}); the run deletes its intermediates: grant "
                                         "s3:DeleteObject, and remove the probe") from None
        return "ok", f"{url}: a probe object was written and deleted"
    if "://" in url and not url.startswith("file://"):
        return "warning", f"{url}: not checked (only local folders and s3:// are)"
    path = os.path.abspath(os.path.expanduser(url.removeprefix("file://")))
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise PreflightError(f"{url} cannot be made: {parent} is a file, not a folder")
    if os.statvfs(parent).f_flag & os.ST_RDONLY:
        raise PreflightError(f"{url} is not writable: {parent} is on a read-only file system")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PreflightError(f"{url} is not writable: no write permission on {parent}")
    return "ok", f"{path}: writable"


def _open_files(choice: ExecutorChoice) -> tuple[Status, str]:
    if choice.name in ("lambda", "coiled") or (choice.name == "dask-distributed" and choice.address):
        return "ok", "tasks run elsewhere"
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = FILES_BASE + FILES_PER_WORKER * choice.workers
    if soft != resource.RLIM_INFINITY and soft < need:
        raise PreflightError(f"the open-file limit is {soft}, below the {need} that {choice.workers} workers may "
                             f"hold; raise it (ulimit -n {need}) or use fewer workers")
    return "ok", f"limit {'unlimited' if soft == resource.RLIM_INFINITY else soft} >= {need}"


def _executor(choice: ExecutorChoice) -> tuple[Status, str]:
    from .executors import preflight as service_preflight

    if choice.name == "dask-distributed" and choice.address:
        return _dask_scheduler(choice)
    service_preflight(choice)
    if choice.name == "lambda":
        workers = getattr(choice.lambda_options, "max_workers", LAMBDA_DEFAULT_CONCURRENCY)
        if workers > LAMBDA_DEFAULT_CONCURRENCY:
            return "warning", (f"max_workers = {workers} is above Lambda's default concurrency of "
                               f"{LAMBDA_DEFAULT_CONCURRENCY}: request a quota increase first (deploy/README.md)")
        return "ok", "AWS Lambda answers; the functions' memory holds a task"
    if choice.name == "coiled":
        return "ok", "Coiled answers and a token is configured"
    return "ok", "runs on this machine"


def runtime_versions() -> dict[str, str]:
    """Python and the matched packages' versions in this process ("-" for a package not installed).
    Also what a Dask worker runs when the client asks it (a plain function, importable by name)."""
    out = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in MATCHED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def version_mismatch(client: dict[str, str], remote: dict[str, str], where: str) -> str | None:
    """One line naming the first difference that matters (Python major.minor, then each package the client
    has), or None."""
    def minor(v: str) -> str:
        return ".".join(v.split(".")[:2])

    if minor(client["python"]) != minor(remote.get("python", "?")):
        return (f"{where} runs Python {remote.get('python', '?')}, the client {client['python']}: tasks pickled here "
                f"will not load there; run the client and the workers on the same Python minor version")
    for name, version in client.items():
        if name == "python" or version == "-":
            continue
        theirs = remote.get(name, "-")
        if theirs != version:
            return (f"{where} has {name} {theirs if theirs != '-' else 'not installed'}, the client {version}: "
                    "install the same versions on both")
    return None


def _dask_scheduler(choice: ExecutorChoice) -> tuple[Status, str]:
    try:
        from distributed import Client
    except ImportError:
        raise PreflightError("dask-distributed needs the 'dask' extra: pip install 'polaragg[dask]'") from None
    try:
        client = Client(choice.address, timeout=f"{SCHEDULER_TIMEOUT_S}s")
    except (OSError, TimeoutError) as exc:
        raise PreflightError(f"the Dask scheduler at {choice.address} does not answer within "
                             f"{SCHEDULER_TIMEOUT_S:g} s ({type(exc).__name__}); start it or fix executor.scheduler") \
            from None
    try:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
        if not workers:
            raise PreflightError(f"the Dask scheduler at {choice.address} has no workers; start some")
        mine = runtime_versions()
        for address, theirs in client.sync(client._run, runtime_versions,  # bounded: a hung worker fails the check
                                           callback_timeout=SCHEDULER_TIMEOUT_S * 2).items():
            problem = version_mismatch(mine, theirs, f"Dask worker {address}")
            if problem:
                raise PreflightError(problem)
        if choice.allowed_mem:
            def per_thread(info: dict) -> float:
                return (info.get("memory_limit") or float("inf")) / (info.get("nthreads") or 1)

            smallest = min(workers.items(), key=lambda kv: per_thread(kv[1]))
            limit = smallest[1].get("memory_limit") or 0
            threads = smallest[1].get("nthreads") or 1
            if limit and limit / threads < choice.allowed_mem:
                raise PreflightError(f"Dask worker {smallest[0]} has {limit / 2**20:.0f} MiB for {threads} thread(s), "
                                     f"less than executor.memory_per_task ({choice.allowed_mem / 2**20:.0f} MiB) per "
                                     "task; give the workers more memory or lower memory_per_task")
        return "ok", f"scheduler answers; {len(workers)} worker(s) with the client's Python and packages"
    finally:
        client.close()
