"""The one retry policy: full-jitter delays, the attempt limit, transient-only retries, and its users.

`retry.retrying` turns a `domain.RetryPolicy` into a tenacity loop. These tests check the delays it
sleeps (seeded, so they can be compared draw for draw), that it stops after `attempts` tries and
re-raises the last error unchanged, that only transient errors are retried, and that granule reads
(`aggregate.partition_granule`) and CMR page requests (`cmr.search_granules`) go through it.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from polaragg import aggregate, cmr, retry
from polaragg.aggregate import PartitionJob, TaskLayout, partition_granule
from polaragg.cmr import CmrError, CmrQuery, CmrSettings, search_granules
from polaragg.domain import GranuleFailure, GranuleRef, RetryPolicy
from polaragg.fs import EndpointUnreachable
from polaragg.grid import Grid
from polaragg.intermediate import Location
from polaragg.read import GranuleError

try:
    from cmr_server import fake_atl06_records
except ImportError:  # tests/ imported as a package
    from tests.cmr_server import fake_atl06_records

SRC = Path(__file__).resolve().parents[1] / "src" / "polaragg"


class Flaky(Exception):
    """A failure the tests call transient."""


class Broken(Exception):
    """A failure the tests call permanent."""


def _bound(policy: RetryPolicy, n: int) -> float:
    return min(policy.cap_seconds, policy.base_seconds * 2.0 ** (n - 1))


def _failing(n_failures: int, exc: type[Exception] = Flaky):
    """A callable that raises `exc` on its first `n_failures` calls, then returns "ok"; `.calls` counts."""

    def work():
        work.calls += 1
        if work.calls <= n_failures:
            raise exc(f"failure {work.calls}")
        return "ok"

    work.calls = 0
    return work


def _is_flaky(exc: BaseException) -> bool:
    return isinstance(exc, Flaky)


# ------------------------------------------------------------------------------------------------
# The policy itself
# ------------------------------------------------------------------------------------------------


def test_delays_are_full_jitter_draws_bounded_by_the_capped_exponential():
    policy = RetryPolicy(attempts=8, base_seconds=0.5, cap_seconds=3.0)
    slept: list[float] = []
    work = _failing(100)
    with pytest.raises(Flaky):
        retry.retrying(policy, _is_flaky, sleep=slept.append, rng=random.Random(11))(work)
    reference = random.Random(11)
    expected = [reference.uniform(0.0, _bound(policy, n)) for n in range(1, policy.attempts)]
    assert slept == expected  # one draw per failed try but the last, uniform(0, min(cap, base * 2**(n-1)))
    assert all(0.0 <= d <= _bound(policy, n) for n, d in enumerate(slept, start=1))
    assert [_bound(policy, n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0]


def test_delays_use_the_random_module_by_default_and_policy_delay_agrees():
    policy = RetryPolicy(attempts=5, base_seconds=0.2, cap_seconds=1.0)
    slept: list[float] = []
    random.seed(5)
    with pytest.raises(Flaky):
        retry.retrying(policy, _is_flaky, sleep=slept.append)(_failing(100))
    random.seed(5)
    assert slept == [policy.delay(n) for n in range(1, 5)]
    draws = [policy.delay(3, random.Random(n)) for n in range(2000)]
    assert 0.0 <= min(draws) and max(draws) <= 0.8 and max(draws) > 0.7  # spread over the whole range


def test_stops_after_attempts_and_reraises_the_last_error():
    for attempts in (1, 2, 4):
        work = _failing(100)
        slept: list[float] = []
        with pytest.raises(Flaky, match=f"failure {attempts}$"):
            retry.retrying(RetryPolicy(attempts, 0.01, 0.02), _is_flaky, sleep=slept.append)(work)
        assert work.calls == attempts and len(slept) == attempts - 1


def test_success_after_transient_failures_returns_the_result():
    work = _failing(2)
    slept: list[float] = []
    assert retry.retrying(RetryPolicy(3, 0.01, 0.02), _is_flaky, sleep=slept.append)(work) == "ok"
    assert work.calls == 3 and len(slept) == 2


def test_only_transient_errors_are_retried():
    work = _failing(100, Broken)
    slept: list[float] = []
    with pytest.raises(Broken, match="failure 1$"):
        retry.retrying(RetryPolicy(5, 0.01, 0.02), _is_flaky, sleep=slept.append)(work)
    assert work.calls == 1 and slept == []


def test_a_policy_of_no_attempts_still_tries_once():
    work = _failing(100)
    with pytest.raises(Flaky):
        retry.retrying(RetryPolicy(0, 0.01, 0.02), _is_flaky, sleep=lambda s: None)(work)
    assert work.calls == 1


# ------------------------------------------------------------------------------------------------
# Granule reads
# ------------------------------------------------------------------------------------------------

GRID = Grid(6, 12)


@pytest.fixture
def reads(monkeypatch):
    """Granule reads replaced by a scripted sequence of outcomes; backoff sleeps recorded, not slept."""
    state = {"script": [], "reads": 0, "slept": [], "policies": []}

    def read_granule(ref, job, granule_bin):
        state["reads"] += 1
        outcome = state["script"].pop(0) if state["script"] else None
        if outcome is not None:
            raise outcome
        return {"rows": 0, "rows_invalid": 0, "rows_filtered": 0, "rows_outside": 0}, None, []

    real = retry.retrying

    def spy(policy, *args, **kwargs):
        state["policies"].append(policy)
        return real(policy, *args, **kwargs)

    monkeypatch.setattr(aggregate, "_partition", read_granule)
    monkeypatch.setattr(aggregate, "retrying", spy)
    monkeypatch.setattr(retry, "_sleep", state["slept"].append)
    return state


@pytest.fixture
def partition(tmp_path):
    """The granule stage of one granule under a policy, returning its record."""
    def run(policy: RetryPolicy):
        job = PartitionJob(TaskLayout(np.array([0], np.uint64), 1, GRID), Location(str(tmp_path / "parts")), "k",
                           retry=policy)
        return partition_granule(GranuleRef("G1", "file:///nowhere/G1.h5"), job)

    return run


def _failure(record) -> GranuleFailure | None:
    if record.status == "ok":
        return None
    return GranuleFailure(record.granule, record.reason, record.transient, record.attempts)


def test_granule_read_retries_transient_failures_through_the_policy(reads, partition):
    policy = RetryPolicy(attempts=4, base_seconds=0.25, cap_seconds=0.6)
    reads["script"] = [GranuleError("u", "reset (injected)", transient=True)] * 2
    random.seed(3)
    result = partition(policy)
    assert _failure(result) is None and result.attempts == 3
    assert reads["reads"] == 3 and reads["policies"] == [policy]
    random.seed(3)
    assert reads["slept"] == [policy.delay(1), policy.delay(2)]


def test_granule_read_gives_up_after_attempts_with_the_same_failure_record(reads, partition):
    policy = RetryPolicy(attempts=3, base_seconds=0.01, cap_seconds=0.02)
    reads["script"] = [GranuleError("u", "read timed out (injected)", transient=True)] * 10
    result = partition(policy)
    assert _failure(result) == GranuleFailure("G1", "read timed out (injected)", True, 3)
    assert reads["reads"] == 3 and len(reads["slept"]) == 2


@pytest.mark.parametrize(
    ("error", "reason", "transient"),
    [
        (GranuleError("u", "not an HDF5 file", transient=False), "not an HDF5 file", False),
        (OSError("truncated"), "OSError: truncated", False),
    ],
)
def test_permanent_granule_failures_are_recorded_after_one_attempt(reads, partition, error, reason, transient):
    reads["script"] = [error]
    result = partition(RetryPolicy(attempts=4, base_seconds=0.01, cap_seconds=0.02))
    assert _failure(result) == GranuleFailure("G1", reason, transient, 1)
    assert reads["reads"] == 1 and reads["slept"] == []


def test_unreachable_endpoint_stops_the_task_without_retry(reads, partition):
    reads["script"] = [EndpointUnreachable("endpoint http://127.0.0.1:1 is unreachable")]
    with pytest.raises(EndpointUnreachable):
        partition(RetryPolicy(attempts=4, base_seconds=0.01, cap_seconds=0.02))
    assert reads["reads"] == 1 and reads["slept"] == []


def test_the_recipe_retry_section_configures_granule_reads():
    from polaragg.recipe import RetryConfig

    assert RetryConfig(attempts=6, base_seconds=0.1, cap_seconds=2.0).policy() == RetryPolicy(6, 0.1, 2.0)


# ------------------------------------------------------------------------------------------------
# CMR page requests
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def cmr_retries(monkeypatch):
    """The policies CMR requests were given, and the backoff sleeps (recorded, not slept)."""
    state = {"slept": [], "policies": []}
    real = retry.retrying

    def spy(policy, *args, **kwargs):
        state["policies"].append(policy)
        return real(policy, *args, **kwargs)

    monkeypatch.setattr(cmr, "retrying", spy)
    monkeypatch.setattr(retry, "_sleep", state["slept"].append)
    return state


def _cmr_settings(server, **kw) -> CmrSettings:
    base = dict(host=server.host, scheme="http", timeout=2.0, retries=3, backoff=0.05, backoff_cap=0.3,
                total_timeout=30.0)
    base.update(kw)
    return CmrSettings(**base)


def test_cmr_retries_transient_http_errors_through_the_policy(cmr_server_factory, cmr_retries):
    server = cmr_server_factory(fake_atl06_records(cycles=(22,), rgts=range(1, 6)))
    server.fail_next(3, status=503)
    got = search_granules(CmrQuery(page_size=2000), _cmr_settings(server))
    assert got and server.count() == 4 and server.count("http") == 3
    assert cmr_retries["policies"] == [RetryPolicy(4, 0.05, 0.3)]
    slept = cmr_retries["slept"]
    assert len(slept) == 3 and all(0.0 <= d <= min(0.3, 0.05 * 2 ** (n - 1)) for n, d in enumerate(slept, 1))


def test_cmr_gives_up_after_retries_plus_one_attempts(cmr_server_factory, cmr_retries):
    server = cmr_server_factory(fake_atl06_records(cycles=(22,), rgts=range(1, 6)))
    server.fail_next(10, status=500)
    with pytest.raises(CmrError, match="gave up after 3 attempt") as info:
        search_granules(CmrQuery(), _cmr_settings(server, retries=2))
    assert info.value.attempts == 3 and info.value.status == 500
    assert server.count() == 3 and len(cmr_retries["slept"]) == 2


def test_cmr_does_not_retry_a_permanent_http_error(cmr_server_factory, cmr_retries):
    server = cmr_server_factory(fake_atl06_records(cycles=(22,), rgts=range(1, 6)))
    server.fail_next(1, status=400)
    with pytest.raises(CmrError, match="not retried") as info:
        search_granules(CmrQuery(), _cmr_settings(server))
    assert info.value.attempts == 1 and server.count() == 1 and cmr_retries["slept"] == []


def test_cmr_backoff_honours_retry_after_up_to_the_cap(cmr_server_factory, cmr_retries):
    server = cmr_server_factory(fake_atl06_records(cycles=(22,), rgts=range(1, 6)))
    server.fail_next(1, status=429, retry_after=0.2)
    server.fail_next(1, status=429, retry_after=99)
    assert search_granules(CmrQuery(), _cmr_settings(server, backoff=0.001))
    assert cmr_retries["slept"][0] >= 0.2 and cmr_retries["slept"][1] == pytest.approx(0.3)


# ------------------------------------------------------------------------------------------------
# No other retry loop
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["aggregate", "cmr", "read", "cloud"])
def test_no_hand_written_backoff_is_left(module):
    source = (SRC / f"{module}.py").read_text()
    assert "sleep(" not in source, f"{module}.py sleeps by itself; retry through polaragg.retry instead"
