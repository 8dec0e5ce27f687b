"""Executor registry: a name from the recipe or command line -> a Cubed executor (or a Dask scheduler).

Cubed: `single-threaded`, `threads`, `processes`, `lithops-local`, `lambda`.
Dask: `dask` (local threads), `dask-distributed` (LocalCluster or an address), `coiled`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

CUBED_EXECUTORS = ("single-threaded", "threads", "processes", "lithops-local", "lambda")
DASK_EXECUTORS = ("dask", "dask-distributed", "coiled")
ALL_EXECUTORS = CUBED_EXECUTORS + DASK_EXECUTORS


class ExecutorError(RuntimeError):
    """An executor that cannot be built or reached; the message names the service."""


@dataclass(frozen=True)
class ExecutorChoice:
    name: str
    max_workers: int | None = None
    lambda_options: Any = None  # cloud.LambdaOptions for `lambda`
    coiled_options: Any = None  # cloud.CoiledOptions for `coiled`
    allowed_mem: int | None = None  # bytes a task may use

    @property
    def engine(self) -> str:
        if self.name == "coiled" and getattr(self.coiled_options, "mode", "cluster") == "functions":
            return "cubed"
        return "dask" if self.name in DASK_EXECUTORS else "cubed"

    @property
    def workers(self) -> int:
        return self.max_workers or os.cpu_count() or 1


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

        return ProcessesExecutor(max_workers=choice.workers)
    if choice.name == "lithops-local":
        try:
            from cubed.runtime.executors.lithops import LithopsExecutor
        except ImportError as exc:
            raise ExecutorError("lithops-local needs the 'lithops' extra: pip install 'polaragg[lithops]'") from exc
        config = {
            "lithops": {"backend": "localhost", "storage": "localhost", "log_level": "WARNING"},
            "localhost": {"runtime": sys.executable, "worker_processes": choice.workers},
        }
        return LithopsExecutor(config=config)
    if choice.name == "lambda":
        from .cloud import LambdaOptions, lambda_executor

        return lambda_executor(choice.lambda_options or LambdaOptions(), allowed_mem=choice.allowed_mem)
    if choice.name == "coiled" and choice.engine == "cubed":
        from .cloud import coiled_functions_executor

        return coiled_functions_executor(choice.coiled_options)
    if choice.name in DASK_EXECUTORS:
        raise ExecutorError(f"{choice.name} is a Dask executor, not a Cubed one")
    raise ExecutorError(f"unknown executor {choice.name!r}; expected one of {', '.join(ALL_EXECUTORS)}")


def dask_compute(arr, choice: ExecutorChoice, address: str | None = None):
    """Compute a Dask array on the named Dask executor."""
    if choice.name == "dask":
        return arr.compute(scheduler="threads", num_workers=choice.workers)
    if choice.name == "dask-distributed":
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:
            raise ExecutorError("dask-distributed needs the 'dask' extra: pip install 'polaragg[dask]'") from exc
        if address:
            try:
                with Client(address, timeout="10s") as client:
                    return client.compute(arr).result()
            except OSError as exc:
                raise ExecutorError(f"Dask scheduler at {address} is not reachable: {exc}") from exc
        with LocalCluster(n_workers=choice.workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            return client.compute(arr).result()
    if choice.name == "coiled":
        from .cloud import CoiledOptions, coiled_client

        client = coiled_client(choice.coiled_options or CoiledOptions())
        try:
            return client.compute(arr).result()
        finally:
            client.close()
            client.cluster.close()
    raise ExecutorError(f"{choice.name} is not a Dask executor")
