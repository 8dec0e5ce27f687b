"""polaragg.cmr.search_granules, through the real earthaccess client, against tests/cmr_server.py."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from polaragg.cmr import CmrError, CmrQuery, CmrSettings, granule_size_bytes, search_granules

try:
    from cmr_server import fake_atl06_records
except ImportError:  # tests/ imported as a package
    from tests.cmr_server import fake_atl06_records

NAME_RE = re.compile(r"^ATL06_(\d{14})_(\d{4})(\d{2})(\d{2})_(\d{3})_(\d{2})\.h5$")
CYCLE_22 = "ATL06_??????????????_????22??_*"


@pytest.fixture(scope="module")
def records():
    """345 v006 records (cycles 21-23, RGTs 1-40, regions 10-12, a few missing) + 35 v007 records."""
    v6 = fake_atl06_records(cycles=(21, 22, 23), rgts=range(1, 41))
    v7 = fake_atl06_records(cycles=(23,), rgts=range(1, 13), version="007", serial_start=10_000)
    return v6 + v7


def _urs(recs):
    return {r["umm"]["GranuleUR"] for r in recs}


def _v6(records):
    return [r for r in records if r["umm"]["CollectionReference"]["Version"] == "006"]


def _settings(server, **kw):
    base = dict(host=server.host, scheme="http", timeout=2.0, retries=3, backoff=0.01, total_timeout=30.0)
    base.update(kw)
    return CmrSettings(**base)


def _page_requests(server):
    return [e for e in server.request_log if e["path"] == "/search/granules.umm_json"]


def test_all_pages_exact_set(cmr_server_factory, records):
    server = cmr_server_factory(records)
    got = search_granules(CmrQuery(page_size=50), _settings(server))
    expected = _urs(_v6(records))
    assert len(expected) == 345
    urs = [r["umm"]["GranuleUR"] for r in got]
    assert len(urs) == len(set(urs)) == 345
    assert set(urs) == expected
    assert all(set(r) == {"meta", "umm"} and isinstance(r, dict) for r in got)
    assert type(got[0]) is dict  # plain dicts, not earthaccess DataGranule
    # 7 page requests, nothing else (no hits query, no empty trailing page, no collection lookup)
    reqs = server.request_log
    assert len(reqs) == math.ceil(345 / 50) == 7
    assert all(e["path"] == "/search/granules.umm_json" and e["outcome"] == "200" for e in reqs)
    for i, e in enumerate(reqs):
        params = dict(e["params"])
        assert params["page_size"] == "50"
        assert (params["short_name"], params["version"], params["provider"]) == ("ATL06", "006", "NSIDC_CPRD")
        assert ("cmr-search-after" in e["headers"]) == (i > 0)


def test_page_count_when_hits_is_a_multiple_of_page_size(cmr_server_factory, records):
    server = cmr_server_factory(records)
    got = search_granules(CmrQuery(page_size=23, granule_name_patterns=(CYCLE_22,)), _settings(server))
    assert len(got) == 115 and server.count() == 5  # 115 = 5 x 23: no extra empty page


def test_version_filter(cmr_server_factory, records):
    server = cmr_server_factory(records)
    got = search_granules(CmrQuery(version="007", page_size=2000), _settings(server))
    assert _urs(got) == {u for u in _urs(records) if u.endswith("_007_01.h5")}
    assert len(got) == 35 and server.count() == 1  # 12 RGTs x 3 regions, RGT 7 lacks region 11


def test_cycle_selection_by_name_pattern(cmr_server_factory, records):
    server = cmr_server_factory(records)
    got = search_granules(CmrQuery(page_size=40, granule_name_patterns=(CYCLE_22,)), _settings(server))
    expected = {u for u in _urs(_v6(records)) if NAME_RE.match(u).group(3) == "22"}
    assert len(expected) == 115
    assert _urs(got) == expected
    params = server.request_log[0]["params"]
    assert ("readable_granule_name[]", CYCLE_22) in params
    assert ("options[readable_granule_name][pattern]", "true") in params

    # two patterns are ORed
    server2 = cmr_server_factory(records)
    two = ("ATL06_??????????????_????21??_*", "ATL06_??????????????_????23??_*")
    got2 = search_granules(CmrQuery(page_size=100, granule_name_patterns=two), _settings(server2))
    assert _urs(got2) == {u for u in _urs(_v6(records)) if NAME_RE.match(u).group(3) in ("21", "23")}


def test_temporal_filter(cmr_server_factory, records):
    server = cmr_server_factory(records)
    start, end = "2023-12-20T02:00:00Z", "2023-12-21T07:30:00Z"
    got = search_granules(CmrQuery(temporal=(start, end), page_size=20), _settings(server))

    def ts(s):
        return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))

    lo, hi = ts(start), ts(end)
    expected = set()
    for r in _v6(records):
        rng = r["umm"]["TemporalExtent"]["RangeDateTime"]
        if ts(rng["BeginningDateTime"]) <= hi and ts(rng["EndingDateTime"]) >= lo:
            expected.add(r["umm"]["GranuleUR"])
    assert 10 < len(expected) < 100
    assert _urs(got) == expected
    assert ("temporal[]", "2023-12-20T02:00:00Z,2023-12-21T07:30:00Z") in server.request_log[0]["params"]


def test_bounding_box_is_sent(cmr_server_factory, records):
    server = cmr_server_factory(records)
    got = search_granules(CmrQuery(bounding_box=(-180, -90, 180, -60), page_size=2000), _settings(server))
    assert len(got) == 345
    assert dict(server.request_log[0]["params"])["bounding_box"] == "-180.0,-90.0,180.0,-60.0"


def test_transient_errors_are_retried_and_result_is_exact(cmr_server_factory, records, caplog):
    server = cmr_server_factory(records)
    server.fail_next(2, status=500)  # first page: two 500s
    server.drop_next(1, after=1)  # second page: connection closed without a response
    server.drop_next(1, after=1, reset=True)  # third page: TCP reset
    server.fail_next(1, status=503, after=1)  # fourth page
    server.fail_next(1, status=429, after=1)  # fifth page
    with caplog.at_level(logging.WARNING, logger="polaragg.cmr"):
        got = search_granules(CmrQuery(page_size=50), _settings(server))
    assert _urs(got) == _urs(_v6(records)) and len(got) == 345
    assert server.fault_counts == {"http": 4, "drop": 2}
    assert server.count("200") == 7 and server.count() == 13
    retry_lines = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retry_lines) == 6
    assert any("HTTP 500" in m for m in retry_lines) and any("HTTP 429" in m for m in retry_lines)
    assert all(server.host in m for m in retry_lines)
    # a retried page re-sent the same cmr-search-after value as the failed attempt
    log = server.request_log
    for failed, retried in zip(log, log[1:]):
        if failed["outcome"] in ("http", "drop"):
            assert failed["headers"].get("cmr-search-after") == retried["headers"].get("cmr-search-after")


def test_retry_after_is_honoured(cmr_server_factory, records):
    server = cmr_server_factory(records)
    server.fail_next(1, status=503, retry_after=0.4)
    t0 = time.monotonic()
    got = search_granules(CmrQuery(page_size=2000), _settings(server))
    assert len(got) == 345 and time.monotonic() - t0 >= 0.4


def test_stalled_server_ends_with_cmr_error(cmr_server_factory, records):
    server = cmr_server_factory(records)
    server.stall_next(10)
    t0 = time.monotonic()
    with pytest.raises(CmrError) as info:
        search_granules(CmrQuery(page_size=50), _settings(server, timeout=1.0, retries=1, backoff=0.2))
    elapsed = time.monotonic() - t0
    assert 1.9 < elapsed < 4.0  # 2 attempts x 1 s + at most 0.2 s backoff
    msg = str(info.value)
    assert server.host in msg and "timeout after 1 s" in msg and "2 attempt" in msg
    assert info.value.attempts == 2 and info.value.host == f"http://{server.host}"
    assert server.count() == 2


def test_total_timeout_bounds_the_search(cmr_server_factory, records):
    server = cmr_server_factory(records)
    server.stall_next(100)
    t0 = time.monotonic()
    with pytest.raises(CmrError, match="total timeout of 1.5 s") as info:
        search_granules(CmrQuery(), _settings(server, timeout=10.0, retries=10, total_timeout=1.5))
    assert time.monotonic() - t0 < 2.5
    assert server.host in str(info.value)


def test_trickled_body_is_bounded_by_the_request_timeout(cmr_server_factory, records):
    server = cmr_server_factory(records)
    server.trickle_next(5, interval=0.1)  # every byte arrives well within the read timeout
    t0 = time.monotonic()
    with pytest.raises(CmrError, match="not complete within 1 s"):
        search_granules(CmrQuery(), _settings(server, timeout=1.0, retries=1, backoff=0.01))
    assert time.monotonic() - t0 < 3.5


def test_http_400_is_not_retried(cmr_server_factory, records):
    server = cmr_server_factory(records)
    server.fail_next(1, status=400)
    with pytest.raises(CmrError) as info:
        search_granules(CmrQuery(), _settings(server, retries=5))
    assert info.value.status == 400 and info.value.attempts == 1
    msg = str(info.value)
    assert "HTTP 400" in msg and "not retried" in msg and server.host in msg
    assert server.count() == 1


def test_http_404_is_not_retried(cmr_server_factory, records):
    server = cmr_server_factory(records)
    server.fail_next(3, status=404)
    with pytest.raises(CmrError, match="HTTP 404"):
        search_granules(CmrQuery(), _settings(server, retries=5))
    assert server.count() == 1


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = CmrSettings(host=f"127.0.0.1:{port}", scheme="http", timeout=1.0, retries=2, backoff=0.01)
    t0 = time.monotonic()
    with pytest.raises(CmrError, match="connection refused") as info:
        search_granules(CmrQuery(), settings)
    assert info.value.attempts == 3 and f"127.0.0.1:{port}" in str(info.value)
    assert time.monotonic() - t0 < 2


def test_login_token_is_sent_but_never_logged(cmr_server_factory, records, monkeypatch, caplog):
    token = "tok-SECRET-0123456789"
    monkeypatch.setenv("EARTHDATA_TOKEN", token)
    monkeypatch.delenv("EARTHDATA_USERNAME", raising=False)
    monkeypatch.delenv("EARTHDATA_PASSWORD", raising=False)
    server = cmr_server_factory(records)
    server.fail_next(1, status=500)
    settings = _settings(server, login_strategy="environment")
    with caplog.at_level(logging.DEBUG):
        got = search_granules(CmrQuery(page_size=200), settings)
        server.fail_next(1, status=403)
        with pytest.raises(CmrError) as info:
            search_granules(CmrQuery(page_size=200), settings)
    assert len(got) == 345
    assert all(e["headers"].get("authorization") == f"Bearer {token}" for e in server.request_log)
    assert token not in caplog.text and token not in str(info.value)


def test_invalid_settings_fail_before_any_request():
    bad = [
        (CmrQuery(), CmrSettings(login_strategy="interactive")),
        (CmrQuery(), CmrSettings(scheme="ftp")),
        (CmrQuery(), CmrSettings(host="https://cmr.earthdata.nasa.gov")),
        (CmrQuery(), CmrSettings(host="user:pw@cmr.earthdata.nasa.gov")),
        (CmrQuery(), CmrSettings(timeout=0)),
        (CmrQuery(page_size=0), CmrSettings()),
        (CmrQuery(page_size=2001), CmrSettings()),
        (CmrQuery(granule_name_patterns=("ATL06_&x",)), CmrSettings()),
        (CmrQuery(), CmrSettings(host="example.org", scheme="http", login_strategy="environment")),
    ]
    for query, settings in bad:
        with pytest.raises(ValueError):
            search_granules(query, settings)


def test_granule_size_bytes(records):
    assert granule_size_bytes(records[0]) == 60_001_000
    assert granule_size_bytes({"umm": {"DataGranule": {"ArchiveAndDistributionInformation": [
        {"Size": 2, "SizeUnit": "MB"}, {"SizeInBytes": 5}]}}}) == 2 * 1024 * 1024 + 5
    assert granule_size_bytes({"umm": {}}) is None


def _guard_source() -> str:
    """Python source that makes every non-loopback connect / DNS lookup fail and be recorded."""
    return textwrap.dedent(
        """
        import ipaddress, socket
        BLOCKED = []
        def _loop(host):
            if host in ("localhost", None, ""):
                return True
            try:
                return ipaddress.ip_address(str(host).strip("[]")).is_loopback
            except ValueError:
                return False
        _real_connect, _real_connect_ex = socket.socket.connect, socket.socket.connect_ex
        _real_gai = socket.getaddrinfo
        def _check(address):
            host = address[0] if isinstance(address, tuple) else address
            if not _loop(host):
                BLOCKED.append(str(host))
                raise OSError(f"non-loopback connection blocked: {host}")
        def connect(self, address):
            _check(address)
            return _real_connect(self, address)
        def connect_ex(self, address):
            _check(address)
            return _real_connect_ex(self, address)
        def getaddrinfo(host, *a, **k):
            _check((host,))
            return _real_gai(host, *a, **k)
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
        """
    )


def test_no_socket_to_a_non_loopback_address(cmr_server_factory, records, monkeypatch):
    """In a fresh interpreter (earthaccess imported under the guard), a full search with a login,
    retries and paging only ever connects to 127.0.0.1."""
    server = cmr_server_factory(records)
    server.fail_next(1, status=502, after=1)  # page 2 -> 502
    server.drop_next(1)  # its retry -> dropped, the next retry succeeds
    script = _guard_source() + textwrap.dedent(
        f"""
        import json, earthaccess
        from polaragg.cmr import CmrQuery, CmrSettings, search_granules
        got = search_granules(
            CmrQuery(page_size=60, granule_name_patterns=({CYCLE_22!r},)),
            CmrSettings(host={server.host!r}, scheme="http", timeout=2, retries=3, backoff=0.01,
                        login_strategy="environment"),
        )
        print(json.dumps({{"n": len(got), "blocked": BLOCKED}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(EARTHDATA_TOKEN="guard-token", NO_PROXY="127.0.0.1,localhost")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env,
                          cwd=Path(__file__).parent)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"n": 115, "blocked": []}
    assert server.fault_counts == {"http": 1, "drop": 1} and server.count("200") == 2


def test_no_socket_to_a_non_loopback_address_in_process(cmr_server_factory, records, monkeypatch):
    """The same guard in this process, with monkeypatch (earthaccess already imported)."""
    blocked: list[str] = []
    real_connect = socket.socket.connect
    real_gai = socket.getaddrinfo

    def loopback(host):
        return host in ("127.0.0.1", "::1", "localhost")

    def connect(self, address):
        if isinstance(address, tuple) and not loopback(address[0]):
            blocked.append(address[0])
            raise OSError("blocked")
        return real_connect(self, address)

    def getaddrinfo(host, *a, **k):
        if not loopback(host):
            blocked.append(host)
            raise OSError("blocked")
        return real_gai(host, *a, **k)

    server = cmr_server_factory(records)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    server.fail_next(1, status=500)
    got = search_granules(CmrQuery(page_size=100), _settings(server))
    assert len(got) == 345 and blocked == []


# --------------------------------------------------------------------------------------------------
# A real record (tests/fixtures/SOURCES.md) through the real client and the catalog

V005_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "umm" / "earthaccess_atl06_v005_umm.json"


def _v005_record() -> dict:
    return json.loads(V005_FIXTURE.read_text())["items"][0]


def test_real_v005_record_is_found_by_its_file_name_and_catalogued(cmr_server_factory, records):
    """GranuleUR `SC:ATL06.005:...`, collection named by EntryTitle, name only in ProducerGranuleId."""
    import numpy as np

    from polaragg.catalog import AccessFallbackWarning, build_catalog

    real = _v005_record()
    server = cmr_server_factory(records + [real])
    query = CmrQuery(version="005", provider="NSIDC_ECS", page_size=10,
                     granule_name_patterns=("ATL06_??????????????_????02??_*",))  # cycle 2, as sources.py asks
    got = search_granules(query, _settings(server))
    assert [r["meta"]["concept-id"] for r in got] == ["G2159085058-NSIDC_ECS"]
    assert got[0]["umm"] == real["umm"]
    assert search_granules(CmrQuery(version="005", provider="NSIDC_ECS", page_size=10,
                                    granule_name_patterns=("ATL06_??????????????_????03??_*",)),
                           _settings(server)) == []
    with pytest.warns(AccessFallbackWarning):
        catalog = build_catalog(got, np.arange(12 * 4**6, dtype=np.uint64), 6, access="direct")
    row = catalog.granules.iloc[0]
    assert (row["name"], row.granule_id, row.cycle, row.rgt, row.region) == (
        "ATL06_20190221121851_08410203_005_01.h5", "G2159085058-NSIDC_ECS", 2, 841, 3)
    assert row.url == real["umm"]["RelatedUrls"][0]["URL"]
    assert row.size_bytes == 0 and len(row.parent_cells) > 0


SIZE_CASES = [  # ArchiveAndDistributionInformation -> bytes (None = unknown)
    ([{"SizeInBytes": 7}], 7),
    ([{"Size": 3, "SizeUnit": "B"}], 3),
    ([{"Size": 1.5, "SizeUnit": "KB"}], 1536),
    ([{"Size": 2, "SizeUnit": "gb"}], 2 * 1024**3),
    ([{"Size": 1, "SizeUnit": "TB"}], 1024**4),
    ([{"Size": 59.1940822601, "SizeUnit": "NA"}], None),  # the real v005 record's
    ([{"Size": 12.0}], None),  # no unit: unknown, not MB
    ([{"Size": "many", "SizeUnit": "MB"}], None),
    ([{"Size": 1, "SizeUnit": "MB"}, {"Size": 1, "SizeUnit": "NA"}], None),  # part unknown: all unknown
    ([{"Name": "x.xml", "SizeInBytes": 9}], 9),
]


def test_granule_size_units():
    got = [granule_size_bytes({"umm": {"DataGranule": {"ArchiveAndDistributionInformation": infos}}})
           for infos, _ in SIZE_CASES]
    assert got == [expected for _, expected in SIZE_CASES]


def test_granule_size_of_the_named_file():
    infos = [{"Name": "ATL06_20190221121851_08410203_005_01.h5", "SizeInBytes": 1000},
             {"Name": "ATL06_20190221121851_08410203_005_01.iso.xml", "SizeInBytes": 11}]
    record = {"umm": {"DataGranule": {"ArchiveAndDistributionInformation": infos}}}
    assert granule_size_bytes(record, name="ATL06_20190221121851_08410203_005_01") == 1000
    assert granule_size_bytes(record) == 1011
    assert granule_size_bytes(_v005_record()) is None
