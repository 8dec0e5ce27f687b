"""The small immutable types that cross module boundaries: granules, filters, retries, failures, executors.

Standard library only, so that every layer (the recipe included) can import them without pulling in
numpy, the readers or an executor. The code that acts on them lives with its layer.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    POLARAGG_VERSION = version("polaragg")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    POLARAGG_VERSION = "0+unknown"

# ------------------------------------------------------------------------------------------------
# Granules and what a task reads from them
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """Which observations count. `quality_max=None` keeps every quality flag."""

    quality_max: int | None = 0


@dataclass(frozen=True)
class GranuleRef:
    granule_id: str
    url: str


@dataclass(frozen=True)
class GranuleFailure:
    granule_id: str
    reason: str
    transient: bool
    attempts: int


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter for transient failures: at most `attempts` tries in all.

    `retry.retrying` turns a policy into the retry loop every caller shares (granule reads, CMR pages).
    """

    attempts: int = 4
    base_seconds: float = 0.5
    cap_seconds: float = 20.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to sleep after failed try `attempt` (counted from 1).

        Drawn uniformly from [0, min(cap_seconds, base_seconds * 2**(attempt - 1))]: full jitter.
        """
        return (rng or random).uniform(0.0, min(self.cap_seconds, self.base_seconds * 2.0 ** (attempt - 1)))


@dataclass(frozen=True)
class FootprintMiss:
    """Rows of a granule that fall in a task whose granule list lacks the granule."""

    granule_id: str
    task: int
    rows: int


# ------------------------------------------------------------------------------------------------
# Executors
# ------------------------------------------------------------------------------------------------

CUBED_EXECUTORS = ("single-threaded", "threads", "processes", "lithops-local", "lambda")
DASK_EXECUTORS = ("dask", "dask-distributed", "coiled")
ALL_EXECUTORS = CUBED_EXECUTORS + DASK_EXECUTORS
LOCAL_EXECUTORS = ("single-threaded", "threads", "processes", "lithops-local", "dask", "dask-distributed")


class ExecutorError(RuntimeError):
    """An executor that cannot be built or reached; the message names the service."""


@dataclass(frozen=True)
class ExecutorChoice:
    name: str
    max_workers: int | None = None
    lambda_options: Any = None  # recipe.LambdaOptions for `lambda`
    coiled_options: Any = None  # recipe.CoiledOptions for `coiled`
    allowed_mem: int | None = None  # bytes a task may use
    address: str | None = None  # dask-distributed: a running scheduler's address
    lithops_storage_bucket: str | None = None  # lithops-local: Lithops' job data in this S3 bucket

    @property
    def engine(self) -> str:
        if self.name == "coiled" and getattr(self.coiled_options, "mode", "cluster") == "functions":
            return "cubed"
        return "dask" if self.name in DASK_EXECUTORS else "cubed"

    @property
    def workers(self) -> int:
        return self.max_workers or os.cpu_count() or 1
