"""Executor registry: a name from the recipe or command line -> a Cubed executor (or a Dask scheduler).

Cubed: `single-threaded`, `threads`, `processes`, `lithops-local`, `lambda`.
Dask: `dask` (local threads), `dask-distributed` (LocalCluster or an address), `coiled`.

Local worker processes are recycled where that is safe (Lithops localhost runs every task in a fresh
interpreter; a LocalCluster worker is restarted by its nanny past its memory limit; `processes`
workers after `TASKS_PER_WORKER` tasks when set) and die with their client (`guard_workers`).
`preflight(choice)` checks, before anything is created, that a cloud executor's service answers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence

from . import cloud
from .credentials import TaskCredentials, receive
from .domain import ALL_EXECUTORS, DASK_EXECUTORS, LOCAL_EXECUTORS, ExecutorChoice, ExecutorError

# Tasks per `processes` worker before it is replaced (a reused worker keeps part of the heap of the
# big tasks it ran first; benchmarks/memory.py). None: Python's pool deadlocks once a worker retires
# with max_tasks_per_child > 1 (CPython gh-115634, in 3.11-3.13 as shipped here), and 1 would pay an
# interpreter start per task; the memory model covers the measured growth of reused workers instead.
TASKS_PER_WORKER: int | None = None
CLIENT_MARKER = "POLARAGG_CLIENT"  # environment variable naming the client that started a process
REAP_INTERVAL_S = 0.25
PUSH_INTERVAL_S = 1.0  # how often a Dask client checks whether its credentials were refreshed

logger = logging.getLogger(__name__)


# Modules a `processes` worker needs (the task modules, and Cubed's, which unpickling a task imports),
# imported once by the fork server instead of by every worker; `polaragg.forkserver` last.
FORKSERVER_PRELOAD = ["polaragg.plan", "polaragg.read", "polaragg.chunks", "h5py", "healpix_geo.nested", "zarr",
                      "cubed", "cubed.runtime.executors.local", "polaragg.forkserver"]


# The client's main script with its argv and sys.path, for the fork server to import it before it forks
# workers, as each worker otherwise does (as `__mp_main__`) in every run: 29 ms for benchmarks/run.py; a
# script importing xdggs at its top, as the README's does, ran a one-cycle recipe on processes in
# 1.8-2.1 s after its first run, against 1.3-1.5 s imported once here. Python 3.11's own way,
# "__main__" in the preload list, never receives the script's path. Left out past MAX_MAIN_BYTES (an
# environment string is limited to 128 KiB: a longer one fails the server's start).
MAIN_PATH_VARIABLE = "POLARAGG_FORKSERVER_MAIN"
MAX_MAIN_BYTES = 32 * 1024


def _start_method() -> str:
    """How `processes` starts workers: forked from a fork server that imported the task modules once
    (cheap, and no threads of the client are copied), else spawned."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return "spawn"
    multiprocessing.get_context("forkserver").set_forkserver_preload(FORKSERVER_PRELOAD)
    return "forkserver"


class _BrokenPoolEcho(logging.Filter):
    """Drops asyncio's "exception was never retrieved" reports of a pool whose breakage was handled."""

    def __init__(self) -> None:
        super().__init__()
        # Imported here, not in `filter`: reports also come while the interpreter shuts down, when
        # imports fail.
        from concurrent.futures.process import BrokenProcessPool

        self._broken = BrokenProcessPool

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, self._broken) and "never retrieved" in record.getMessage())


_BROKEN_POOL_ECHO = _BrokenPoolEcho()


def forget_broken_pool() -> None:
    """After a worker death has been handled: collect the pool's other futures now, without the
    traceback asyncio prints for each one whose BrokenProcessPool nobody retrieved (Cubed raises the
    first and abandons the rest). The filter stays on asyncio's logger for futures collected later
    and hides nothing but these reports."""
    import gc

    asyncio_logger = logging.getLogger("asyncio")
    if _BROKEN_POOL_ECHO not in asyncio_logger.filters:
        asyncio_logger.addFilter(_BROKEN_POOL_ECHO)
    gc.collect()


def start_workers_early(choice: ExecutorChoice) -> None:
    """Start the fork server of a `processes` run now, so that its imports overlap the client's
    catalog and plan instead of delaying the first task (a no-op for other executors, or if it runs).
    The server, and so every worker forked from it, carries the client's marker (`guard_workers`).

    When the client runs a script, the server imports it first (`polaragg.forkserver`) and the workers
    are forked with it imported: what the script does at its top level is done once, before the fork,
    not once per worker (a script must not start threads or open connections there for its workers)."""
    if choice.name != "processes" or _start_method() != "forkserver":
        return
    from multiprocessing import forkserver, resource_tracker, spawn

    guard_workers()
    resource_tracker.ensure_running()  # started by the server's start otherwise, inheriting the variable
    data = spawn.get_preparation_data("polaragg")
    main = json.dumps({"path": data.get("init_main_from_path"), "argv": data.get("sys_argv", []),
                       "sys_path": data.get("sys_path", [])})
    if data.get("init_main_from_path") and len(main.encode()) <= MAX_MAIN_BYTES:
        os.environ[MAIN_PATH_VARIABLE] = main
    try:
        forkserver.ensure_running()
    finally:
        os.environ.pop(MAIN_PATH_VARIABLE, None)


def cubed_executor(choice: ExecutorChoice):
    """The Cubed executor object for a Cubed executor name."""
    if choice.name == "single-threaded":
        from cubed.runtime.executors.local import SingleThreadedExecutor

        return SingleThreadedExecutor()
    if choice.name == "threads":
        from cubed.runtime.executors.local import ThreadsExecutor

        return ThreadsExecutor(max_workers=choice.workers)
    if choice.name == "processes":
        from cubed.runtime.executors.local import ProcessesExecutor

        guard_workers()
        return ProcessesExecutor(max_workers=choice.workers, max_tasks_per_child=TASKS_PER_WORKER,
                                 use_processes=_start_method())
    if choice.name == "lithops-local":
        try:
            from cubed.runtime.executors.lithops import LithopsExecutor
        except ImportError as exc:
            raise ExecutorError("lithops-local needs the 'lithops' extra: pip install 'polaragg[lithops]'") from exc
        guard_workers()  # Lithops localhost runs each task in its own interpreter, in a new session
        return LithopsExecutor(config=lithops_config(choice))
    if choice.name == "lambda":
        from .recipe import LambdaOptions

        return cloud.lambda_executor(choice.lambda_options or LambdaOptions(), allowed_mem=choice.allowed_mem)
    if choice.name == "coiled" and choice.engine == "cubed":
        return cloud.coiled_functions_executor(choice.coiled_options)
    if choice.name in DASK_EXECUTORS:
        raise ExecutorError(f"{choice.name} is a Dask executor, not a Cubed one")
    raise ExecutorError(f"unknown executor {choice.name!r}; expected one of {', '.join(ALL_EXECUTORS)}")


@contextlib.contextmanager
def pushing_credentials(client, credentials: Sequence[TaskCredentials]) -> Iterator[None]:
    """While the block runs, send every refresh of `credentials` to all of the cluster's workers (tasks
    were serialized once, at submission, with the credentials of that moment)."""
    if not credentials:
        yield
        return
    from .dask_plugin import CredentialsPlugin

    stop = threading.Event()
    seen = {c.ident: c.generation for c in credentials}

    def loop() -> None:
        while not stop.wait(PUSH_INTERVAL_S):
            for c in credentials:
                try:
                    c.current()  # refreshed here when due
                    generation = c.generation
                    if generation != seen[c.ident]:
                        # a worker plugin reaches the workers there are and those that join later; the
                        # scheduler, which re-sends tasks it holds, gets them too
                        client.register_plugin(CredentialsPlugin(c), name=f"polaragg-credentials-{c.ident}")
                        client.run_on_scheduler(receive, c)
                        seen[c.ident] = generation
                except Exception as exc:  # noqa: BLE001 - retried at the next tick; tasks report what fails
                    logger.warning("could not send refreshed credentials.%s to the workers: %s", c.name,
                                   type(exc).__name__)

    thread = threading.Thread(target=loop, name="polaragg-credentials-push", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def lithops_config(choice: ExecutorChoice) -> dict:
    """The Lithops config of `lithops-local` or `lambda`."""
    if choice.name == "lambda":
        from .recipe import LambdaOptions

        return cloud.lithops_config(choice.lambda_options or LambdaOptions())
    config = {
        "lithops": {"backend": "localhost", "storage": "localhost", "log_level": "WARNING"},
        "localhost": {"runtime": sys.executable, "worker_processes": choice.workers},
    }
    if choice.lithops_storage_bucket:  # job data in S3, as on Lambda (endpoint and identity: boto3's chain)
        config["lithops"]["storage"] = "aws_s3"
        config["aws_s3"] = {"storage_bucket": choice.lithops_storage_bucket,
                            "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                            or "us-west-2"}
    return config


LITHOPS_SESSION_ENV = "__LITHOPS_SESSION_ID"  # where Lithops keeps this process's session id


def remove_lithops_job_data(choice: ExecutorChoice) -> int:
    """Delete the job data (pickled tasks, with the credentials they carry; statuses; results) that this
    process's Lithops executors left in their storage, at once rather than when the interpreter exits;
    returns the objects deleted. Only keys of this process's own Lithops session are touched."""
    session = os.environ.get(LITHOPS_SESSION_ENV)
    if choice.name not in ("lithops-local", "lambda") or not session:
        return 0
    from lithops.storage import Storage

    storage = Storage(config=lithops_config(choice))
    keys = storage.list_keys(storage.bucket, prefix=f"lithops.jobs/{session}-")
    if keys:
        storage.delete_objects(storage.bucket, keys)
    return len(keys)


def dask_compute(arr, choice: ExecutorChoice, address: str | None = None,
                 credentials: Sequence[TaskCredentials] = ()):
    """Compute a Dask array on the named Dask executor (refreshed `credentials` are pushed to a cluster's
    workers; the local threaded scheduler shares the client's own)."""
    address = address or choice.address
    if choice.name == "dask":
        return arr.compute(scheduler="threads", num_workers=choice.workers)
    if choice.name == "dask-distributed":
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise ExecutorError("dask-distributed needs the 'dask' extra: pip install 'polaragg[dask]'") from exc
        if address:
            try:
                with Client(address, timeout="10s") as client, pushing_credentials(client, credentials):
                    return client.compute(arr).result()
            except OSError as exc:
                raise ExecutorError(f"Dask scheduler at {address} is not reachable: {exc}") from exc
        guard_workers()
        import dask

        # The nanny restarts a worker whose memory passes 95 % of a task's budget (a worker runs one
        # task at a time); no pausing or spilling, which would only stall tasks that hold no data.
        memory = {"target": False, "spill": False, "pause": False, "terminate": 0.95}
        with dask.config.set({f"distributed.worker.memory.{k}": v for k, v in memory.items()}), \
                LocalCluster(n_workers=choice.workers, threads_per_worker=1, processes=True,
                             dashboard_address=None, memory_limit=choice.allowed_mem or "auto") as cluster, \
                Client(cluster) as client, pushing_credentials(client, credentials):
            return client.compute(arr).result()
    if choice.name == "coiled":
        from .recipe import CoiledOptions

        client = cloud.coiled_client(choice.coiled_options or CoiledOptions())
        try:
            with pushing_credentials(client, credentials):
                return client.compute(arr).result()
        finally:
            client.close()
            client.cluster.close()
    raise ExecutorError(f"{choice.name} is not a Dask executor")


def preflight(choice: ExecutorChoice) -> None:
    """Check, within seconds and before anything is created, that the executor's service answers.

    A no-op for local executors. `lambda` and `coiled` raise `ExecutorError` with one line naming the
    service (and its host) when it cannot be reached or is not configured; nothing is started.
    """
    if choice.name in LOCAL_EXECUTORS:
        return
    if choice.name == "lambda":
        from .recipe import LambdaOptions

        cloud.lambda_preflight(choice.lambda_options or LambdaOptions(), allowed_mem=choice.allowed_mem)
        return
    if choice.name == "coiled":
        cloud.coiled_preflight()
        return
    raise ExecutorError(f"unknown executor {choice.name!r}; expected one of {', '.join(ALL_EXECUTORS)}")


# ------------------------------------------------------------------------------------------------
# Worker processes die with their client
# ------------------------------------------------------------------------------------------------

_GUARD: tuple[int, str] | None = None  # (client pid, marker) of the reaper started by this process


def guard_workers() -> str:
    """Make every process this client starts from now on die with it; returns the client's marker.

    Sets `POLARAGG_CLIENT=<marker>` in this process's environment (inherited by pool workers, Lithops
    task interpreters and LocalCluster workers, however deep) and starts, once per client process, a
    reaper: a small process in its own session that waits for the client to end, by any means
    (SIGKILL included), then kills every process whose initial environment carries the marker but
    multiprocessing's resource tracker, which then ends by itself and unlinks the semaphores the client
    left. This needs nothing from the pools themselves (Cubed's process pool takes no initializer).
    """
    global _GUARD
    if _GUARD is not None and _GUARD[0] == os.getpid():
        return _GUARD[1]
    marker = f"{os.getpid()}-{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if k != CLIENT_MARKER}
    subprocess.Popen(
        [sys.executable, "-c", "import sys; from polaragg.executors import reap; reap(int(sys.argv[1]), sys.argv[2])",
         str(os.getpid()), marker],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )
    os.environ[CLIENT_MARKER] = marker
    _GUARD = (os.getpid(), marker)
    return marker


def reap(client_pid: int, marker: str, interval: float = REAP_INTERVAL_S) -> None:
    """The reaper's body: wait until `client_pid` (this process's parent) ends, then kill every process
    started with `POLARAGG_CLIENT=marker`, sweeping until none is left."""
    import psutil

    while os.getppid() == client_pid:
        time.sleep(interval)
    quiet = 0
    while quiet < 3:  # a pool may start a replacement worker while it is being killed
        found = _marked(marker, psutil)
        for proc in found:
            try:
                proc.kill()
            except psutil.Error:
                pass
        quiet = 0 if found else quiet + 1
        time.sleep(interval)


def _marked(marker: str, psutil) -> list:
    """The processes started with `marker`, but multiprocessing's resource tracker: it ends by itself
    once the client and its workers are gone, unlinking the semaphores they left (killed, it leaves
    them in /dev/shm)."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(CLIENT_MARKER) == marker and not _is_resource_tracker(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _is_resource_tracker(cmdline: list[str]) -> bool:
    return any("multiprocessing.resource_tracker" in part for part in cmdline)
