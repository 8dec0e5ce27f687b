"""A dead S3 endpoint fails fast: bounded timeouts and retries, then a circuit breaker per endpoint.

Each test runs its own moto server on 127.0.0.1 (the session one must stay up), kills it, and brings it
back on the same port.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest

from polaragg import read
from polaragg.fs import S3_CLIENT_CONFIG, EndpointUnreachable, fsspec_options
from polaragg.read import CircuitBreaker, GranuleError, open_granule

try:
    from conftest import S3_TEST_CREDENTIALS
except ImportError:  # tests/ imported as a package
    from tests.conftest import S3_TEST_CREDENTIALS

THRESHOLD = 3
COOLDOWN_S = 2.0


class Moto:
    """A moto S3 server on a fixed 127.0.0.1 port that can be killed and started again."""

    def __init__(self, log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        sibling = Path(sys.executable).with_name("moto_server")
        command = [str(sibling)] if sibling.exists() else [sys.executable, "-m", "moto.server"]
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command + ["-H", "127.0.0.1", "-p", str(self.port)], stdout=log,
                                         stderr=subprocess.STDOUT, env=env)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                with opener.open(f"{self.url}/moto-api/", timeout=1.0):
                    return
            except OSError:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def moto(s3_env, monkeypatch, tmp_path):
    server = Moto(tmp_path / "moto.log")
    server.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", server.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    monkeypatch.setattr(read, "BREAKER", CircuitBreaker(THRESHOLD, COOLDOWN_S))
    yield server
    server.kill()


def _upload(granules: list[Path], bucket: str) -> None:
    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    for path in granules:
        client.upload_file(str(path), bucket, path.name)


def _granules(demo_cache, n=2):
    folder, _ = demo_cache
    return sorted(Path(folder).glob("*.h5"), key=lambda p: p.stat().st_size)[:n]


def _read_all(url, reader):
    """Open a granule, list its beams and read one variable of the first: what a task does first."""
    with open_granule(url, reader) as granule:
        beams = granule.beams()
        return beams, granule.read(beams[0], ("latitude",))["latitude"]


@pytest.mark.parametrize("reader", ["h5py", "h5coro"])
def test_dead_endpoint_trips_the_breaker_and_a_live_one_resets_it(moto, demo_cache, reader):
    import h5py

    granules = _granules(demo_cache)
    bucket = f"faults-{uuid.uuid4().hex[:10]}"
    _upload(granules, bucket)
    urls = [f"s3://{bucket}/{p.name}" for p in granules]
    with h5py.File(granules[0]) as f:
        beam = sorted(k for k in f if k.startswith("gt"))[0]
        want = f[f"{beam}/land_ice_segments/latitude"][:]
        want_h = f[f"{beam}/land_ice_segments/h_li"][:]

    beams, lat = _read_all(urls[0], reader)
    np.testing.assert_array_equal(lat, want)
    opened = open_granule(urls[0], reader)  # kept open across the outage
    assert read.BREAKER.failures(moto.url) == 0

    moto.kill()
    outcomes, durations, messages = [], [], []
    started = time.monotonic()
    for i in range(THRESHOLD + 3):
        t0 = time.monotonic()
        try:
            _read_all(urls[i % 2], reader)
            outcomes.append("ok")
        except EndpointUnreachable as exc:
            outcomes.append("unreachable")
            messages.append(str(exc))
        except GranuleError as exc:
            assert exc.transient, exc.reason  # a refused connection is worth retrying, at first
            outcomes.append("granule")
        durations.append(time.monotonic() - t0)
    total = time.monotonic() - started
    # the first THRESHOLD - 1 failures are the granule's; the THRESHOLD-th opens the breaker
    assert outcomes == ["granule"] * (THRESHOLD - 1) + ["unreachable"] * 4, outcomes
    assert total < 60, durations
    assert all(d < 0.2 for d in durations[THRESHOLD:]), durations  # no I/O once open
    assert len(set(messages)) == 1  # one message, naming the endpoint and nothing secret
    assert moto.url in messages[0] and "unreachable" in messages[0]
    assert not any(v in messages[0] for v in S3_TEST_CREDENTIALS.values())
    with pytest.raises(EndpointUnreachable):  # an already open granule stops too, at once
        opened.read(beams[0], ("h_li",))
    assert read.BREAKER.is_open(moto.url)

    moto.start()  # back, on the same port (moto keeps no state: upload again)
    _upload(granules, bucket)
    with pytest.raises(EndpointUnreachable):  # still within the cool-down: nothing is tried
        _read_all(urls[0], reader)
    time.sleep(COOLDOWN_S + 0.1)
    beams, lat = _read_all(urls[0], reader)
    np.testing.assert_array_equal(lat, want)
    assert read.BREAKER.failures(moto.url) == 0 and not read.BREAKER.is_open(moto.url)
    got = opened.read(beams[0], ("h_li",))["h_li"]  # the granule kept open reads again
    np.testing.assert_array_equal(got, want_h)
    opened.close()


def test_one_failure_of_a_dead_endpoint_is_bounded(moto, demo_cache):
    """Without the breaker (threshold never reached), one open of a dead endpoint fails within the
    configured connect timeout and retries, for both readers."""
    moto.kill()
    read.BREAKER.threshold = 10**6
    for reader in ("h5py", "h5coro"):
        t0 = time.monotonic()
        with pytest.raises(GranuleError) as info:
            _read_all("s3://some-bucket/ATL06_x.h5", reader)
        assert info.value.transient
        assert time.monotonic() - t0 < 15, reader  # s3fs's defaults took ~11 s; h5coro's ~6 s


def test_an_answering_endpoint_resets_the_count(moto, demo_cache):
    """Error responses (a missing key) are answers: they reset the consecutive-failure count."""
    granules = _granules(demo_cache, 1)
    bucket = f"faults-{uuid.uuid4().hex[:10]}"
    _upload(granules, bucket)
    breaker = read.BREAKER
    breaker.failure(moto.url, ConnectionRefusedError())
    breaker.failure(moto.url, ConnectionRefusedError())
    assert breaker.failures(moto.url) == THRESHOLD - 1
    with pytest.raises(GranuleError) as info:
        _read_all(f"s3://{bucket}/missing.h5", "h5coro")
    assert "not found" in info.value.reason
    assert breaker.failures(moto.url) == 0


def test_breaker_is_per_endpoint_and_needs_consecutive_failures():
    clock = [0.0]
    breaker = CircuitBreaker(3, 10.0, clock=lambda: clock[0])
    a, b = "http://127.0.0.1:1", "http://127.0.0.1:2"

    def refused():
        raise ConnectionRefusedError("refused")

    def answered():
        raise FileNotFoundError("no such key")  # the endpoint answered

    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            breaker.call(a, refused)
    with pytest.raises(FileNotFoundError):
        breaker.call(a, answered)
    assert breaker.failures(a) == 0
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            breaker.call(a, refused)
    with pytest.raises(EndpointUnreachable, match="127.0.0.1:1 is unreachable"):
        breaker.call(a, refused)
    assert breaker.call(b, lambda: "fine") == "fine"  # another endpoint is unaffected
    calls = []
    with pytest.raises(EndpointUnreachable):
        breaker.call(a, lambda: calls.append(1))
    assert not calls  # nothing is tried while open
    clock[0] = 10.5  # after the cool-down one try goes through; a failure re-opens at once
    with pytest.raises(EndpointUnreachable):
        breaker.call(a, refused)
    clock[0] = 21.0
    assert breaker.call(a, lambda: "back") == "back"
    assert breaker.failures(a) == 0 and not breaker.is_open(a)


def test_timeouts_and_retries_are_configured_unless_set():
    options = fsspec_options("s3://b/k.h5")
    assert options["config_kwargs"] == S3_CLIENT_CONFIG
    mine = fsspec_options("s3://b/k.h5", {"config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 9}}})
    assert mine["config_kwargs"]["connect_timeout"] == 1 and mine["config_kwargs"]["retries"] == {"max_attempts": 9}
    assert mine["config_kwargs"]["read_timeout"] == S3_CLIENT_CONFIG["read_timeout"]
    assert "config_kwargs" not in fsspec_options("/local/file.h5")


def test_clients_get_the_timeouts(moto, demo_cache):
    import fsspec

    granules = _granules(demo_cache, 1)
    bucket = f"faults-{uuid.uuid4().hex[:10]}"
    _upload(granules, bucket)
    url = f"s3://{bucket}/{granules[0].name}"
    fs, _ = fsspec.core.url_to_fs(url, **fsspec_options(url))
    config = fs.s3.meta.config if hasattr(fs, "s3") and fs.s3 is not None else None
    if config is None:  # s3fs connects lazily
        fs.info(url)
        config = fs.s3.meta.config
    assert config.connect_timeout == S3_CLIENT_CONFIG["connect_timeout"]
    assert config.read_timeout == S3_CLIENT_CONFIG["read_timeout"]
    assert config.retries["total_max_attempts"] == S3_CLIENT_CONFIG["retries"]["total_max_attempts"]
    with open_granule(url, "h5coro") as granule:
        config = granule._h5.driver.client.meta.config
        assert granule._h5.driver.client.meta.endpoint_url == moto.url
    assert config.connect_timeout == S3_CLIENT_CONFIG["connect_timeout"]
    assert config.read_timeout == S3_CLIENT_CONFIG["read_timeout"]
    assert config.retries["total_max_attempts"] == S3_CLIENT_CONFIG["retries"]["total_max_attempts"]


def test_dead_endpoint_ends_the_run_and_resume_gives_the_identical_store(moto, demo_cache, tmp_path):
    import polaragg
    from polaragg.catalog import build_catalog, read_directory
    from polaragg.sources import aoi_parents
    from polaragg.store import open_store

    try:
        from test_s3 import SUB_BBOX, _assert_same_store, _recipe, _s3_records
    except ImportError:
        from tests.test_s3 import SUB_BBOX, _assert_same_store, _recipe, _s3_records

    folder, recipe = demo_cache
    doc = recipe.model_dump(mode="json")
    doc["aoi"] = {"bbox": SUB_BBOX}
    sub = polaragg.load_recipe(doc)
    parents, order = aoi_parents(sub), sub.grid.parent_order
    local = build_catalog(read_directory(folder), parents, order)
    touching = set(local.granules.name[local.granules.parent_cells.map(len) > 0])
    records = [r for r in read_directory(folder) if r["umm"]["GranuleUR"] in touching]
    polaragg.run(_recipe(doc, build_catalog(records, parents, order), tmp_path / "local.parquet", "h5py"),
                 store=str(tmp_path / "local.zarr"), executor="threads", progress=False)
    want = open_store(str(tmp_path / "local.zarr")).load()

    bucket = f"faults-{uuid.uuid4().hex[:10]}"
    _upload([Path(r["local_path"]) for r in records], bucket)
    s3_recipe = _recipe(doc, build_catalog(_s3_records(records, bucket), parents, order, access="direct"),
                        tmp_path / "s3.parquet", "h5py")
    store = str(tmp_path / "s3.zarr")
    moto.kill()
    t0 = time.monotonic()
    with pytest.raises(Exception) as info:
        polaragg.run(s3_recipe, store=store, executor="threads", progress=False)
    assert time.monotonic() - t0 < 60
    assert moto.url in str(info.value) and "unreachable" in str(info.value)
    assert len(str(info.value).splitlines()) == 1

    moto.start()
    _upload([Path(r["local_path"]) for r in records], bucket)
    read.BREAKER.reset()
    polaragg.run(s3_recipe, store=store, executor="threads", progress=False, resume=True)
    _assert_same_store(open_store(store).load(), want)
