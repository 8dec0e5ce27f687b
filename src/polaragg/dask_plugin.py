"""The Dask worker plugin that carries a run's renewed credentials to every worker, present or joining later.

Kept apart from `executors` because it imports `distributed` at module level (the class must be importable
by name where it is unpickled), which the rest of polaragg imports only when a Dask cluster is used.
"""

from __future__ import annotations

from distributed.diagnostics.plugin import WorkerPlugin

from .credentials import TaskCredentials, receive


class CredentialsPlugin(WorkerPlugin):
    """One credential set: unpickling it on a worker offers its snapshot to the worker's set (see
    `credentials._restore`); setup has nothing more to do."""

    def __init__(self, credentials: TaskCredentials) -> None:
        self.credentials = credentials

    def setup(self, worker) -> None:  # noqa: ANN001 - distributed's Worker
        receive(self.credentials)
