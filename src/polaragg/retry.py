"""The one retry policy polaragg uses for transient failures: `domain.RetryPolicy` driving tenacity.

`RetryPolicy` (attempts, base_seconds, cap_seconds) says how often and how patiently to try; `retrying`
turns it into a `tenacity.Retrying` that tries at most `attempts` times and, after failed try n, sleeps
a time drawn uniformly from [0, min(cap_seconds, base_seconds * 2**(n-1))] (exponential backoff with
full jitter, so that many workers hitting the same flaky service spread their retries out).

Which exceptions are transient is the caller's decision (a predicate). Any other exception propagates
at once, from its first occurrence; once the attempts are spent the last transient exception
propagates unchanged, unless the caller's `give_up` turns the final state into its own error. Callers
that also need the number of tries made read `RetryCallState.attempt_number` (the iterator form gives
it per try).

The transports keep their own request-level retries where they fit better (botocore's retry
configuration for S3, see `fs.S3_CLIENT_CONFIG`); this policy sits one level above them: whole granule
reads and whole CMR page requests.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import tenacity

from .domain import RetryPolicy

Wait = Callable[[tenacity.RetryCallState], float]


def full_jitter(policy: RetryPolicy, rng: random.Random | None = None) -> Wait:
    """tenacity wait: after failed try n, `policy.delay(n)` (uniform in [0, min(cap, base * 2**(n-1))])."""

    def wait(state: tenacity.RetryCallState) -> float:
        return policy.delay(state.attempt_number, rng)

    return wait


def _sleep(seconds: float) -> None:
    time.sleep(seconds)  # looked up at call time, so a patched time.sleep is honoured


def retrying(
    policy: RetryPolicy,
    transient: Callable[[BaseException], bool],
    *,
    wait: Wait | None = None,
    stop: tenacity.stop.stop_base | None = None,
    sleep: Callable[[float], None] | None = None,
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
    give_up: Callable[[tenacity.RetryCallState], Any] | None = None,
    rng: random.Random | None = None,
) -> tenacity.Retrying:
    """A `tenacity.Retrying` for `policy`, retrying only exceptions for which `transient` is true.

    The first try always runs (a policy of fewer than one attempt means one). `wait` replaces the
    full-jitter wait (e.g. to honour a server's Retry-After on top of it), `stop` adds a stop condition
    to the attempt limit (e.g. a deadline), `sleep` replaces `time.sleep`, `before_sleep` runs before
    each backoff sleep (logging), and `give_up`, if given, is called with the final state instead of
    re-raising the last transient exception. `rng` draws the jitter (default: the `random` module).
    """
    rule: tenacity.stop.stop_base = tenacity.stop_after_attempt(max(1, int(policy.attempts)))
    if stop is not None:
        rule = rule | stop
    return tenacity.Retrying(
        stop=rule,
        wait=wait if wait is not None else full_jitter(policy, rng),
        retry=tenacity.retry_if_exception(transient),
        sleep=sleep if sleep is not None else _sleep,
        before_sleep=before_sleep,
        retry_error_callback=give_up,
        reraise=True,
    )
