"""Credential sets: fetched from a real (local) s3credentials endpoint, renewed before expiry, carried by
pickled tasks as the snapshot of the moment they were pickled, never going back to older ones in a
worker, renewed by workers only when allowed, and never printed."""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
import time
import uuid

import pytest

from polaragg import credentials as cr
from polaragg.recipe import CredentialsConfig, RecipeError, load_recipe

try:
    from auth_s3 import CredentialsEndpoint
except ImportError:
    from tests.auth_s3 import CredentialsEndpoint


@pytest.fixture
def endpoint(monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with CredentialsEndpoint(3, "edl-" + uuid.uuid4().hex) as e:
        monkeypatch.setenv("EARTHDATA_TOKEN", e.bearer_token)
        yield e


def _earthdata(endpoint, margin=1.5, workers_refresh=False) -> CredentialsConfig:
    return CredentialsConfig(source="earthdata", endpoint=endpoint.url, refresh_margin_s=margin,
                             workers_refresh=workers_refresh)


def test_earthdata_credentials_are_fetched_and_renewed_before_expiry(endpoint):
    creds = cr.open_credentials(_earthdata(endpoint), "granules")
    first = creds.s3fs()
    assert first["token"] == endpoint.issued[-1]["sessionToken"] and endpoint.valid_token(first["token"])
    time.sleep(0.2)
    assert creds.s3fs()["token"] == first["token"]  # still outside the margin: no new fetch
    deadline = time.time() + 6
    while creds.s3fs()["token"] == first["token"] and time.time() < deadline:
        time.sleep(0.1)
    renewed = creds.s3fs()["token"]
    assert renewed != first["token"] and endpoint.valid_token(renewed)  # renewed while the first was still valid
    assert endpoint.expires_at(first["token"]) > time.time() - 2


def test_s3_options_always_hand_out_the_current_credentials(endpoint):
    creds = cr.open_credentials(_earthdata(endpoint), "store")
    options = cr.S3Options({"endpoint_url": "http://127.0.0.1:9"}, creds)

    def kwargs(**kw):
        return kw

    tokens = set()
    deadline = time.time() + 7
    while len(tokens) < 3 and time.time() < deadline:
        seen = {kwargs(**options)["token"], dict(options)["token"], {**options}["token"], options.copy()["token"]}
        assert len(seen) == 1  # every way of reading them agrees
        tokens |= seen
        assert endpoint.valid_token(seen.pop())
        time.sleep(0.2)
    assert len(tokens) >= 3
    text = repr(options) + str(options) + repr(creds)
    assert not any(secret in text for secret in endpoint.secrets())


def test_a_pickled_task_carries_the_credentials_of_the_moment_it_was_pickled(endpoint):
    creds = cr.open_credentials(_earthdata(endpoint), "granules")
    options = cr.S3Options({}, creds)
    early = pickle.dumps(options)
    early_token = creds.s3fs()["token"]
    endpoint.lifetime_s = 10  # the later credentials outlast a slow interpreter start below
    while creds.s3fs()["token"] == early_token:
        time.sleep(0.1)
    late = pickle.dumps(options)
    late_token = creds.s3fs()["token"]
    # a worker: a fresh interpreter that unpickles the later task first, then the earlier one
    script = ("import pickle, sys\nlate, early = pickle.loads(bytes.fromhex(sys.argv[1])), "
              "pickle.loads(bytes.fromhex(sys.argv[2]))\nprint(dict(late)['token'], dict(early)['token'])")
    out = subprocess.run([sys.executable, "-c", script, late.hex(), early.hex()], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == [late_token, late_token]  # never back to the older snapshot
    assert early_token.encode() in early and late_token.encode() in late
    assert endpoint.bearer_token.encode() not in early + late  # the login token stays home by default


def test_workers_renew_for_themselves_only_when_allowed(endpoint):
    script = ("import pickle, sys, time\nfrom polaragg.credentials import CredentialError\n"
              "o = pickle.loads(bytes.fromhex(sys.argv[1]))\nsent = pickle.loads(bytes.fromhex(sys.argv[2]))\n"
              "time.sleep(4.5)\n"  # the snapshot sent has expired by now, however slow this interpreter started
              "try:\n    print('renewed' if dict(o)['token'] != sent else 'same')\n"
              "except CredentialError as exc:\n    print('error:', exc)\n")
    for allowed in (True, False):
        creds = cr.open_credentials(_earthdata(endpoint, workers_refresh=allowed), "granules")
        blob = pickle.dumps(cr.S3Options({}, creds))
        sent = pickle.dumps(creds.s3fs()["token"])  # the token inside blob (pickled just before)
        assert (endpoint.bearer_token.encode() in blob) is allowed
        fetches = endpoint.fetches
        out = subprocess.run([sys.executable, "-c", script, blob.hex(), sent.hex()], capture_output=True, text=True,
                             timeout=60).stdout.strip()
        if allowed:
            assert out == "renewed" and endpoint.fetches > fetches
        else:
            assert out.startswith("error:") and "cannot renew" in out and "workers_refresh" in out, out
            assert endpoint.fetches == fetches


def test_a_refused_or_unreachable_endpoint_is_one_clear_line_without_the_token(endpoint, monkeypatch):
    monkeypatch.setenv("EARTHDATA_TOKEN", "wrong-token-" + uuid.uuid4().hex)
    with pytest.raises(cr.CredentialError) as refused:
        cr.open_credentials(_earthdata(endpoint), "granules")
    message = str(refused.value)
    assert "refused the Earthdata login token in $EARTHDATA_TOKEN" in message and "HTTP 401" in message
    assert "wrong-token" not in message and "\n" not in message
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(cr.CredentialError) as unreachable:
        cr.EarthdataFetcher(f"http://127.0.0.1:{port}/s3credentials", "t0ken-" + uuid.uuid4().hex, attempts=2)()
    assert f"127.0.0.1:{port} is not reachable" in str(unreachable.value) and time.monotonic() - start < 15
    monkeypatch.delenv("EARTHDATA_TOKEN")
    with pytest.raises(cr.CredentialError, match=r"credentials.store: source earthdata needs .* \$EARTHDATA_TOKEN"):
        cr.open_credentials(_earthdata(endpoint), "store")


def test_the_client_chain_is_resolved_once_and_sent(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACLIENTCHAINTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "client-chain-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    creds = cr.open_credentials(CredentialsConfig(), "store")
    assert creds.s3fs() == {"key": "AKIACLIENTCHAINTEST", "secret": "client-chain-secret"}
    assert creds.expires_at is not None  # static keys are re-read from the chain now and then
    options = cr.S3Options({}, creds)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACHANGEDLATER")  # the worker side does not look at its env
    script = "import pickle, sys\nprint(dict(pickle.loads(bytes.fromhex(sys.argv[1])))['key'])"
    out = subprocess.run([sys.executable, "-c", script, pickle.dumps(options).hex()], capture_output=True,
                         text=True, timeout=60, check=True).stdout.strip()
    assert out == "AKIACLIENTCHAINTEST"
    assert cr.open_credentials(CredentialsConfig(source="worker"), "store") is None
    nothing = cr.S3Options({"anon": True})
    assert dict(nothing) == {"anon": True, "key": None, "secret": None, "token": None}  # explicitly none


def test_process_defaults_reach_filesystems_made_without_options(endpoint):
    import fsspec.config

    creds = cr.open_credentials(_earthdata(endpoint), "store")
    defaults = cr.process_defaults(cr.S3Options({"endpoint_url": "http://127.0.0.1:9"}, creds))
    try:
        assert fsspec.config.conf["s3"] is defaults
        script = ("import pickle, sys, fsspec.config, s3fs\npickle.loads(bytes.fromhex(sys.argv[1]))\n"
                  "fs = s3fs.S3FileSystem(skip_instance_cache=True)\nprint(fs.token == dict(fsspec.config.conf['s3'])"
                  "['token'] and fs.key is not None)")
        out = subprocess.run([sys.executable, "-c", script, pickle.dumps(defaults).hex()], capture_output=True,
                             text=True, timeout=60, check=True).stdout.strip()
        assert out == "True"
    finally:
        cr.clear_process_defaults()
    assert "s3" not in fsspec.config.conf


def test_recipe_credentials_sections_are_validated():
    base = {"name": "x", "source": {"kind": "synthetic"}, "aoi": {"bbox": [0, -90, 1, -80]}}
    recipe = load_recipe({**base, "credentials": {"granules": {"source": "earthdata", "workers_refresh": True}}})
    assert recipe.credentials.granules.endpoint_url == "https://data.nsidc.earthdatacloud.nasa.gov/s3credentials"
    assert recipe.credentials.store.source == "client"
    with pytest.raises(RecipeError, match="credentials.store"):
        load_recipe({**base, "credentials": {"store": {"source": "client", "workers_refresh": True}}})
    with pytest.raises(RecipeError, match="credentials.granules.source"):
        load_recipe({**base, "credentials": {"granules": {"source": "nasa"}}})


def _token_of_blob(blob: bytes) -> str:
    return dict(pickle.loads(blob))["token"]


def test_dask_workers_that_join_later_get_the_renewed_credentials(endpoint):
    """A task pickled before a renewal, run on a worker that joined after it, uses the renewed credentials
    (the push reaches late workers as a plugin), and they are the client's current ones."""
    from distributed import Client, LocalCluster

    from polaragg.executors import pushing_credentials

    creds = cr.open_credentials(_earthdata(endpoint), "granules")
    old_task = pickle.dumps(cr.S3Options({}, creds))
    old_token = creds.s3fs()["token"]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client, pushing_credentials(client, [creds]):
        first = set(client.scheduler_info()["workers"])
        deadline = time.time() + 10
        while creds.s3fs()["token"] == old_token and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(2.5)  # a push interval or two after the renewal
        cluster.scale(2)
        client.wait_for_workers(2, timeout=60)
        late = (set(client.scheduler_info()["workers"]) - first).pop()
        got = client.submit(_token_of_blob, old_task, workers=[late], pure=False).result(timeout=60)
        assert got != old_token and endpoint.valid_token(got)


def test_the_latest_scope_of_a_prefix_wins():
    from polaragg.fs import options_scope, scoped_options

    first, second = cr.S3Options({"endpoint_url": "http://a"}), cr.S3Options({"endpoint_url": "http://b"})
    store = cr.S3Options({"endpoint_url": "http://store"})
    with options_scope({"s3://": first, "s3://bucket/store.zarr": store}):
        with options_scope({"s3://": second}):
            assert scoped_options("s3://nsidc/granule.h5") is second
            assert scoped_options("s3://bucket/store.zarr.ledger/x.json") is store  # the longer prefix
        assert scoped_options("s3://nsidc/granule.h5") is first
    assert scoped_options("s3://nsidc/granule.h5") is None


def test_long_term_keys_never_leave_the_client(s3_env, monkeypatch):
    """Tasks pickled to other processes carry STS session credentials (from the local S3/STS server), not
    the client's long-term keys; in-process executors use the keys as they are."""
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIALONGTERMKEY00001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "long-term-secret-" + uuid.uuid4().hex)
    secret = __import__("os").environ["AWS_SECRET_ACCESS_KEY"]
    here = cr.open_credentials(CredentialsConfig(), "store")
    assert here.s3fs()["secret"] == secret
    sent = cr.open_credentials(CredentialsConfig(), "store", leaves_client=True)
    session = sent.s3fs()
    assert session["key"] != "AKIALONGTERMKEY00001" and session["secret"] != secret and session["token"]
    assert sent.expires_at is not None and sent.expires_at < time.time() + cr.SESSION_SECONDS + 60
    blob = pickle.dumps(cr.S3Options({}, sent))
    assert secret.encode() not in blob and b"AKIALONGTERMKEY00001" not in blob
    import boto3

    # the session credentials work against the S3 server
    boto3.client("s3", aws_access_key_id=session["key"], aws_secret_access_key=session["secret"],
                 aws_session_token=session["token"]).list_buckets()
