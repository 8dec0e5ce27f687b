"""benchmarks/s3.py: the counting proxy counts what clients really sent (requests and body bytes, checked
against boto3 calls made here and against the readers' own fetches), and pays the injected latency."""

import math
import threading
import time
from pathlib import Path

import pytest

from helpers import load_benchmark

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "s3.py"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("s3")


@pytest.fixture(scope="module")
def granules(bench, tmp_path_factory):
    """Two demo granules: the demo source restricted to two of its RGTs (same files as in the demo)."""
    from polaragg.recipe import load_recipe
    from polaragg.sources import synthetic_folder

    source = load_recipe(bench.DEMO_RECIPE).source.model_copy(
        update={"rgts": [1, 19], "regions": [11], "cache_dir": str(tmp_path_factory.mktemp("s3-bench-cache"))})
    files = sorted(synthetic_folder(source).glob("*.h5"))
    assert len(files) == 2
    return files


@pytest.fixture(scope="module")
def proxy(bench, granules, tmp_path_factory):
    """moto + the counting proxy (both started by the benchmark's own code), granules uploaded."""
    with bench.moto_server(tmp_path_factory.mktemp("s3-bench-moto")) as moto, \
            bench.counting_proxy(moto.url) as proxy, bench.s3_environment(proxy.url):
        bench.upload(moto.url, granules)
        yield proxy


@pytest.fixture
def client(proxy):
    import boto3

    return boto3.client("s3", endpoint_url=proxy.url, region_name="us-west-2")


def test_proxy_counts_match_the_requests_made(bench, proxy, client, granules):
    path = granules[0]
    data = path.read_bytes()
    size = len(data)
    ranges = [(0, 99), (1000, 5999), (size - 10, size - 1), (0, size - 1), (4096, 4096)]
    proxy.set_latency(0)
    proxy.reset()
    received = 0
    for lo, hi in ranges:
        body = client.get_object(Bucket=bench.BUCKET, Key=path.name, Range=f"bytes={lo}-{hi}")["Body"].read()
        assert body == data[lo:hi + 1]
        received += len(body)
    client.head_object(Bucket=bench.BUCKET, Key=path.name)
    listed = client.list_objects_v2(Bucket=bench.BUCKET, Prefix="ATL06_")
    assert sorted(o["Key"] for o in listed["Contents"]) == sorted(p.name for p in granules)
    note = b"written through the proxy"  # a body goes through too (after botocore's 100-continue)
    client.put_object(Bucket=bench.BUCKET, Key="notes/n.txt", Body=note)
    assert client.get_object(Bucket=bench.BUCKET, Key="notes/n.txt")["Body"].read() == note

    traffic = proxy.counts()
    assert traffic.gets() == len(ranges)
    assert traffic.bytes() == received == sum(hi - lo + 1 for lo, hi in ranges)
    assert traffic.other_on() == 1  # the HEAD
    assert traffic.elsewhere() == {f"GET {bench.BUCKET}/": 1,  # the listing
                                   f"PUT {bench.BUCKET}/notes/": 1, f"GET {bench.BUCKET}/notes/": 1}
    assert traffic.bytes(f"{bench.BUCKET}/notes/") == len(note)
    assert traffic.errors() == 0

    proxy.reset()  # a reset really clears, and a missing key is counted as an error response
    with pytest.raises(client.exceptions.NoSuchKey):
        client.get_object(Bucket=bench.BUCKET, Key="nope.h5")
    traffic = proxy.counts()
    assert traffic.gets() == 1 and traffic.errors() == 1 and traffic.other_on() == 0


def test_key_prefixes(bench):
    assert bench.key_prefix("/granules/ATL06_x.h5?x-id=GetObject") == "granules/*.h5"
    assert bench.key_prefix("/granules/out.zarr/h_mean/c/0") == "granules/out.zarr/"
    assert bench.key_prefix("/granules?list-type=2") == "granules/"
    assert bench.key_prefix("/") == "/"


def test_latency_is_paid_per_request_and_concurrently(bench, proxy, client, granules):
    key = granules[0].name
    proxy.set_latency(150)
    try:
        t0 = time.perf_counter()
        for _ in range(3):
            client.head_object(Bucket=bench.BUCKET, Key=key)
        sequential = time.perf_counter() - t0
        threads = [threading.Thread(target=client.head_object, kwargs={"Bucket": bench.BUCKET, "Key": key})
                   for _ in range(4)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        concurrent = time.perf_counter() - t0
    finally:
        proxy.set_latency(0)
    assert sequential >= 3 * 0.150
    assert 0.150 <= concurrent < 4 * 0.150  # the four waits overlap


def test_h5coro_floor_counts_match_the_drivers_reads(bench, proxy, granules):
    from polaragg.read import _s3_driver_class

    reads: list[int] = []
    base = _s3_driver_class()

    class CountingDriver(base):  # h5coro's own count of the byte ranges it fetched
        def read(self, offset, size):
            data = base.read(self, offset, size)
            reads.append(len(data))
            return data

    line = 64 * 1024
    setting = bench.Setting("h5coro", "test", lambda url: bench.read_h5coro(url, line, CountingDriver))
    urls = [bench.s3_url(p) for p in granules]
    floor = bench.measure_floor(proxy, setting, urls, 0.0)
    ideal = bench.chunk_inventory(granules)
    assert not floor.error and floor.rows == ideal.rows
    assert floor.gets == len(reads) and floor.get_bytes == sum(reads)
    assert floor.other_on_granules == 0 and floor.elsewhere == 0 and floor.http_errors == 0
    # every cache line holding a needed chunk was fetched, none twice
    assert _lines_of_chunks(bench, granules, line) <= floor.gets <= sum(math.ceil(p.stat().st_size / line)
                                                                        for p in granules)


def test_h5py_floor_counts_match_s3fs_fetches(bench, proxy, granules, monkeypatch):
    import s3fs.core

    fetches: list[int] = []
    fetch = s3fs.core.S3File._fetch_range

    def counting_fetch(self, start, end):  # s3fs's own count of the ranges its cache asked for
        data = fetch(self, start, end)
        fetches.append(len(data))
        return data

    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", counting_fetch)
    urls = [bench.s3_url(p) for p in granules]
    ideal = bench.chunk_inventory(granules)
    for block, cache in ((None, "readahead"), (256 * 1024, "blockcache")):
        fetches.clear()
        setting = bench.Setting("h5py", cache, lambda url, b=block, c=cache: bench.read_h5py(url, b, c))
        floor = bench.measure_floor(proxy, setting, urls, 0.0)
        assert not floor.error and floor.rows == ideal.rows
        assert floor.gets == len(fetches) > 0 and floor.get_bytes == sum(fetches)
        assert floor.other_on_granules == len(granules)  # one HEAD (object size) per open
        assert floor.get_bytes >= ideal.chunk_bytes


def _lines_of_chunks(bench, files, line: int) -> int:
    """Distinct cache lines of `line` bytes that the six columns' chunks occupy, over the files."""
    import h5py

    total = 0
    for path in files:
        lines = set()
        with h5py.File(path, "r") as f:
            for beam in bench.BEAMS:
                group = f.get(f"{beam}/land_ice_segments")
                for name in bench.COLUMNS if group is not None else ():
                    dset = group[name].id
                    for i in range(dset.get_num_chunks()):
                        info = dset.get_chunk_info(i)
                        lines.update(range(info.byte_offset // line, (info.byte_offset + info.size - 1) // line + 1))
        total += len(lines)
    return total
