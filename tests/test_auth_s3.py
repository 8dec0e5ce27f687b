"""The temporary-credential S3 of tests/auth_s3.py: Earthdata-style credentials, a proxy that checks them."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import hashlib
import http.client
import io
import json
import os
import re
import time
import urllib.error
import urllib.request
import uuid

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

try:
    from auth_s3 import CredentialsEndpoint, TokenCheckingProxy
except ImportError:  # tests/ imported as a package
    from tests.auth_s3 import CredentialsEndpoint, TokenCheckingProxy

BEARER = "edl-bearer-" + uuid.uuid4().hex
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy variable


@pytest.fixture(autouse=True)
def _no_ambient_aws(monkeypatch, tmp_path):
    """No credentials, profile or endpoint from the environment: only what a test passes counts."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                 "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def creds():
    with CredentialsEndpoint(lifetime_s=300, bearer_token=BEARER) as endpoint:
        yield endpoint


@pytest.fixture
def proxy(moto_server, creds):
    with TokenCheckingProxy(moto_server, creds) as p:
        yield p


def fetch(endpoint: CredentialsEndpoint, bearer: str | None = BEARER) -> dict[str, str]:
    request = urllib.request.Request(endpoint.url)
    if bearer is not None:
        request.add_header("Authorization", f"Bearer {bearer}")
    with _DIRECT.open(request, timeout=10) as response:
        return json.load(response)


@pytest.fixture
def client(_no_ambient_aws):
    """Factory of S3 clients to a proxy with explicit credentials; call it on the main thread only."""
    session = boto3.session.Session()  # after the environment is cleaned; one per test (making one is slow)

    def make(proxy: TokenCheckingProxy, credential: dict[str, str], token: bool = True, **config):
        options = {"retries": {"mode": "standard", "max_attempts": 2}, "max_pool_connections": 20, **config}
        keys = {"aws_access_key_id": credential["accessKeyId"],
                "aws_secret_access_key": credential["secretAccessKey"]}
        if token:
            keys["aws_session_token"] = credential["sessionToken"]
        return session.client("s3", endpoint_url=proxy.url, region_name="us-east-1", config=Config(**options),
                              **keys)

    return make


def new_bucket() -> str:
    return f"auth-{uuid.uuid4().hex[:16]}"


def error_code(info: pytest.ExceptionInfo) -> str:
    return info.value.response["Error"]["Code"]


def test_endpoint_speaks_nsidc_s3credentials(creds):
    for bearer in ("wrong", None):
        with pytest.raises(urllib.error.HTTPError) as info:
            fetch(creds, bearer)
        assert info.value.code == 401
        assert "error" in json.loads(info.value.read())
    assert creds.unauthorized == 2 and creds.fetches == 0

    before = dt.datetime.now(dt.timezone.utc)
    first, second = fetch(creds), fetch(creds)
    assert set(first) == {"accessKeyId", "secretAccessKey", "sessionToken", "expiration"}
    assert re.fullmatch(r"ASIA[A-Z0-9]{16}", first["accessKeyId"])
    assert len(first["secretAccessKey"]) == 40 and len(first["sessionToken"]) >= 150
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00", first["expiration"])
    expiration = dt.datetime.fromisoformat(first["expiration"])
    assert expiration.utcoffset() == dt.timedelta(0)
    assert 299 <= (expiration - before).total_seconds() <= 302
    assert all(first[k] != second[k] for k in ("accessKeyId", "secretAccessKey", "sessionToken"))

    assert creds.fetches == 2 and creds.issued == [first, second]
    assert creds.valid_token(first["sessionToken"]) and not creds.valid_token("never-issued")
    assert not creds.valid_token(first["sessionToken"], at=expiration)
    assert creds.valid_token(first["sessionToken"], at=expiration - dt.timedelta(seconds=1))
    assert set(creds.secrets()) == {BEARER, *(c[k] for c in (first, second)
                                              for k in ("accessKeyId", "secretAccessKey", "sessionToken"))}


def test_boto3_and_s3fs_work_through_the_proxy(proxy, creds, client):
    import s3fs
    from boto3.s3.transfer import TransferConfig

    credential = fetch(creds)
    s3 = client(proxy, credential)
    bucket = new_bucket()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="small.txt", Body=b"hello")
    big = os.urandom(6 * 2**20 + 123)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=big)  # botocore sends Expect: 100-continue
    assert hashlib.sha256(s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read()).digest() == \
        hashlib.sha256(big).digest()
    ranged = s3.get_object(Bucket=bucket, Key="big.bin", Range="bytes=5000000-5000099")
    assert ranged["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert ranged["Body"].read() == big[5000000:5000100]
    multipart = TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20,
                               max_concurrency=2)
    s3.upload_fileobj(io.BytesIO(big * 2), bucket, "multi.bin", Config=multipart)
    assert s3.head_object(Bucket=bucket, Key="multi.bin")["ContentLength"] == 2 * len(big)
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in listed) == ["big.bin", "multi.bin", "small.txt"]
    for signer in (s3, client(proxy, credential, signature_version="s3v4")):  # SigV2 and SigV4 presigning
        presigned = signer.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "small.txt"})
        assert "x-amz-security-token=" in presigned.lower()
        with _DIRECT.open(presigned, timeout=10) as response:
            assert response.read() == b"hello"

    fs = s3fs.S3FileSystem(key=credential["accessKeyId"], secret=credential["secretAccessKey"],
                           token=credential["sessionToken"], endpoint_url=proxy.url,
                           client_kwargs={"region_name": "us-east-1"}, skip_instance_cache=True)
    with fs.open(f"{bucket}/via-s3fs/data.bin", "wb") as f:
        f.write(big[:300_000])
    assert fs.cat_file(f"{bucket}/via-s3fs/data.bin", start=10, end=20) == big[10:20]
    assert fs.cat(f"{bucket}/via-s3fs/data.bin") == big[:300_000]
    assert fs.ls(f"{bucket}/via-s3fs", detail=False) == [f"{bucket}/via-s3fs/data.bin"]
    assert s3.get_object(Bucket=bucket, Key="via-s3fs/data.bin")["Body"].read() == big[:300_000]

    assert proxy.refused == [] and proxy.tokens_seen == {credential["sessionToken"]}
    assert proxy.forwarded >= 12


def test_raw_chunked_and_expect_requests(proxy, creds, client):
    credential = fetch(creds)
    bucket = new_bucket()
    client(proxy, credential).create_bucket(Bucket=bucket)
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
    conn.putrequest("PUT", f"/{bucket}/chunked.bin")
    conn.putheader("x-amz-security-token", credential["sessionToken"])
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for part in (b"abc" * 1000, b"", b"xyz"):
        if part:
            conn.send(b"%x\r\n%s\r\n" % (len(part), part))
    conn.send(b"0\r\n\r\n")
    assert conn.getresponse().read() is not None
    conn.close()
    assert client(proxy, credential).get_object(Bucket=bucket, Key="chunked.bin")["Body"].read() == \
        b"abc" * 1000 + b"xyz"

    # a refused upload announced with Expect: 100-continue gets its 403 before any body is sent
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
    conn.putrequest("PUT", f"/{bucket}/refused.bin")
    conn.putheader("x-amz-security-token", "not-a-token")
    conn.putheader("Content-Length", "1000000")
    conn.putheader("Expect", "100-continue")
    conn.endheaders()
    response = conn.getresponse()
    body = response.read().decode()
    assert response.status == 403 and "<Code>InvalidToken</Code>" in body
    conn.close()
    assert proxy.refused == [("PUT", f"/{bucket}/refused.bin", "InvalidToken")]


def test_expired_missing_and_unknown_tokens_are_refused(moto_server, client):
    with CredentialsEndpoint(lifetime_s=2, bearer_token=BEARER) as creds, \
            TokenCheckingProxy(moto_server, creds) as proxy:
        credential = fetch(creds)
        s3 = client(proxy, credential)
        bucket = new_bucket()
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="k", Body=b"v")

        expiration = dt.datetime.fromisoformat(credential["expiration"]).timestamp()
        time.sleep(max(0.0, expiration - time.time()) + 0.1)
        with pytest.raises(ClientError) as info:
            s3.get_object(Bucket=bucket, Key="k")
        assert error_code(info) == "ExpiredToken"
        assert info.value.response["Error"]["Message"] == "The provided token has expired."
        with pytest.raises(ClientError) as info:
            s3.put_object(Bucket=bucket, Key="k2", Body=os.urandom(2 * 2**20))  # Expect: 100-continue
        assert error_code(info) == "ExpiredToken"

        with pytest.raises(ClientError) as info:
            client(proxy, credential, token=False).get_object(Bucket=bucket, Key="k")
        assert error_code(info) == "AccessDenied"
        forged = dict(credential, sessionToken="FwoGZXIvYXdzEForged" + "A" * 100)
        with pytest.raises(ClientError) as info:
            client(proxy, forged).list_objects_v2(Bucket=bucket)
        assert error_code(info) == "InvalidToken"
        fresh = fetch(creds)
        with pytest.raises(ClientError) as info:  # a new token signed with the old key
            client(proxy, dict(fresh, accessKeyId=credential["accessKeyId"])).list_objects_v2(Bucket=bucket)
        assert error_code(info) == "InvalidAccessKeyId"

        assert client(proxy, fresh).get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
        codes = {code for _, _, code in proxy.refused}
        assert codes == {"ExpiredToken", "AccessDenied", "InvalidToken", "InvalidAccessKeyId"}
        assert all("?" not in path for _, path, _ in proxy.refused)
        assert proxy.tokens_seen == {credential["sessionToken"], fresh["sessionToken"]}


def test_h5coro_reads_through_the_proxy(proxy, creds, client, monkeypatch, tmp_path):
    import h5py
    import numpy as np
    from h5coro import h5coro, s3driver

    credential = fetch(creds)
    bucket = new_bucket()
    s3 = client(proxy, credential)
    s3.create_bucket(Bucket=bucket)
    values = np.arange(50_000, dtype="f8")
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.create_dataset("gt1l/h_li", data=values, chunks=(10_000,))
    s3.upload_file(str(tmp_path / "g.h5"), bucket, "g.h5")

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)  # h5coro's driver has no endpoint argument
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    h5 = h5coro.H5Coro(f"{bucket}/g.h5", s3driver.S3Driver, credentials=credential, errorChecking=True)
    try:
        promise = h5.readDatasets([{"dataset": "/gt1l/h_li", "hyperslice": [[100, 20_100]]}], block=True)
        assert np.array_equal(np.asarray(promise["gt1l/h_li"]), values[100:20_100])
    finally:
        h5.close()
    assert proxy.refused == [] and credential["sessionToken"] in proxy.tokens_seen


def test_sixteen_parallel_clients(proxy, creds, client):
    credential = fetch(creds)
    bucket = new_bucket()
    client(proxy, credential).create_bucket(Bucket=bucket)
    clients = [client(proxy, credential) for _ in range(16)]

    def work(i: int) -> int:
        s3 = clients[i]
        for j in range(12):
            data = os.urandom(50_000 + 1000 * j) + bytes([i, j])
            s3.put_object(Bucket=bucket, Key=f"t{i}/o{j}", Body=data)
            assert s3.get_object(Bucket=bucket, Key=f"t{i}/o{j}")["Body"].read() == data
            part = s3.get_object(Bucket=bucket, Key=f"t{i}/o{j}", Range="bytes=10-19")["Body"].read()
            assert part == data[10:20]
        return i

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert sorted(pool.map(work, range(16))) == list(range(16))
    shared = clients[0]  # one client, shared by 16 threads (its pool holds 20 connections)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        sizes = list(pool.map(lambda i: shared.head_object(Bucket=bucket, Key=f"t{i}/o3")["ContentLength"],
                              range(16)))
    assert sizes == [53_002] * 16
    assert proxy.refused == [] and proxy.forwarded == 1 + 16 * 12 * 3 + 16
