"""S3 end to end against a local moto server: granules read from s3:// with both readers, the store
and its ledger written to s3://, configured from the environment only (`s3_env`)."""

import copy
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest
import yaml

import polaragg
from polaragg import read
from polaragg.catalog import build_catalog, read_directory
from polaragg.ledger import read_records
from polaragg.read import GranuleError, open_granule
from polaragg.sources import aoi_parents
from polaragg.store import open_store

SUB_BBOX = [80.0, -84.0, 82.0, -83.5]
DIRECT = "GET DATA VIA DIRECT ACCESS"
CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@pytest.fixture(scope="module")
def sub_area(demo_cache):
    """The demo recipe restricted to the sub-AOI, and the local UMM-G records of the granules touching it."""
    folder, recipe = demo_cache
    doc = recipe.model_dump(mode="json")
    doc["aoi"] = {"bbox": SUB_BBOX}
    sub = polaragg.load_recipe(doc)
    order = sub.grid.parent_order
    parents = aoi_parents(sub)
    records = read_directory(folder)
    local = build_catalog(records, parents, order)
    touching = set(local.granules.name[local.granules.parent_cells.map(len) > 0])
    records = [r for r in records if r["umm"]["GranuleUR"] in touching]
    assert 3 <= len(records) < len(read_directory(folder))
    return doc, parents, order, records


def _s3_records(records, bucket, missing=()):
    """Copies of the records whose direct-access URL points at the bucket (or at a missing key)."""
    out = []
    for record in records:
        key = os.path.basename(record["local_path"])
        record = copy.deepcopy(record)
        record.pop("local_path")
        if record["umm"]["GranuleUR"] in missing:
            key = f"missing/{key}"
        for url in record["umm"]["RelatedUrls"]:
            if url["Type"] == DIRECT:
                url["URL"] = f"s3://{bucket}/{key}"
        out.append(record)
    return out


def _recipe(doc, catalog, path, reader):
    catalog.write(path)
    doc = {**doc, "source": {"kind": "catalog", "path": str(path)}, "reader": reader}
    return polaragg.load_recipe(doc)


def _assert_same_store(got, want):
    assert list(got.data_vars) == list(want.data_vars)
    np.testing.assert_array_equal(got.cell_ids.values, want.cell_ids.values)
    np.testing.assert_array_equal(got.time.values, want.time.values)
    np.testing.assert_array_equal(got.time_bounds.values, want.time_bounds.values)
    for name in want.data_vars:
        a, b = got[name].values, want[name].values
        assert a.dtype == b.dtype, name
        if np.issubdtype(b.dtype, np.floating):
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
        np.testing.assert_array_equal(a, b, err_msg=name)  # NaN == NaN here, so floats match exactly


def _observations(records):
    return [(r.parent, r.child_lo, r.child_hi, r.status, r.observations, r.rows_in_cell, r.granules,
             r.granules_read) for r in records]


def _granule_gets(log_path, bucket):
    """GET requests for the bucket's .h5 objects in the moto server's request log."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", log_path.read_text(errors="replace"))  # moto colours its log
    pattern = re.compile(rf'"GET /{re.escape(bucket)}/[^ ?]+\.h5')
    return len(pattern.findall(text))


@pytest.fixture
def bucket(s3_env, sub_area, demo_cache):
    """A fresh bucket holding the sub-area's granules."""
    folder, _ = demo_cache
    _, _, _, records = sub_area
    name = f"polaragg-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3")
    client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    for record in records:
        client.upload_file(record["local_path"], name, os.path.basename(record["local_path"]))
    return name


def test_s3_granules_store_and_ledger_match_local(tmp_path, sub_area, bucket, moto_server_log):
    doc, parents, order, records = sub_area
    local = polaragg.run(_recipe(doc, build_catalog(records, parents, order), tmp_path / "local.parquet", "h5py"),
                         store=str(tmp_path / "local.zarr"), executor="threads", progress=False)
    want = open_store(str(tmp_path / "local.zarr")).load()
    want_records = _observations(read_records(str(tmp_path / "local.zarr")))
    assert local.observations > 0

    catalog = build_catalog(_s3_records(records, bucket), parents, order, access="direct")
    assert catalog.granules.url.str.startswith(f"s3://{bucket}/").all()
    secrets = [os.environ[k] for k in CREDENTIAL_VARS]
    client = boto3.client("s3")
    for reader in ("h5coro", "h5py"):
        store = f"s3://{bucket}/out-{reader}.zarr"
        gets_before = _granule_gets(moto_server_log, bucket)
        read.OPENS.clear()
        summary = polaragg.run(_recipe(doc, catalog, tmp_path / f"s3-{reader}.parquet", reader),
                               store=store, executor="threads", progress=False)
        # the granules were opened by their s3:// URL and read from the moto server
        assert read.OPENS and all(u.startswith(f"s3://{bucket}/") for u in read.OPENS)
        assert _granule_gets(moto_server_log, bucket) > gets_before
        assert summary.observations == local.observations
        _assert_same_store(open_store(store).load(), want)
        assert _observations(read_records(store)) == want_records
        assert all(not r.failures for r in read_records(store))

        # the store and its ledger live in the bucket, and no credential is written anywhere
        keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])]
        ledger = [k for k in keys if k.startswith(f"out-{reader}.zarr.ledger/") and k.endswith(".json")]
        metadata = [k for k in keys if k.startswith(f"out-{reader}.zarr/") and k.endswith("zarr.json")]
        assert len(ledger) == len(want_records) and metadata
        for key in ledger + metadata:
            text = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
            assert not any(s in text for s in secrets), key
        attrs = json.dumps(open_store(store).attrs)
        assert not any(s in attrs for s in secrets)


def test_missing_s3_key_is_recorded_and_the_rest_of_the_cell_aggregated(tmp_path, sub_area, bucket):
    doc, parents, order, records = sub_area
    # the granule touching the most sub-area cells points at a key that does not exist
    local_catalog = build_catalog(records, parents, order)
    victim = local_catalog.granules.iloc[int(np.argmax(local_catalog.granules.parent_cells.map(len)))]
    touched = set(int(c) for c in victim.parent_cells)
    others = [r for r in records if r["umm"]["GranuleUR"] != victim["name"]]
    polaragg.run(_recipe(doc, build_catalog(others, parents, order), tmp_path / "local.parquet", "h5py"),
                 store=str(tmp_path / "local.zarr"), executor="threads", progress=False)
    want = open_store(str(tmp_path / "local.zarr")).load()
    want_records = {r.parent: r for r in read_records(str(tmp_path / "local.zarr"))}

    catalog = build_catalog(_s3_records(records, bucket, missing={victim["name"]}), parents, order, access="direct")
    for reader in ("h5coro", "h5py"):
        store = f"s3://{bucket}/missing-{reader}.zarr"
        summary = polaragg.run(_recipe(doc, catalog, tmp_path / f"missing-{reader}.parquet", reader),
                               store=store, executor="threads", progress=False)
        _assert_same_store(open_store(store).load(), want)
        got = {r.parent: r for r in read_records(store)}
        assert got.keys() == want_records.keys()
        for parent, record in got.items():
            if parent in touched:
                assert len(record.failures) == 1, (reader, record)
                failure = record.failures[0]
                assert failure["granule"] == victim.granule_id
                assert "not found" in failure["reason"], failure
                assert failure["transient"] is False and failure["attempts"] == 1
                assert record.granules_read == record.granules - 1
                assert record.status == ("partial" if record.granules_read else "failed")
            else:
                assert not record.failures
            assert record.observations == want_records[parent].observations
        assert summary.observations == sum(r.observations for r in want_records.values())


def test_h5coro_s3_errors_are_classified(s3_env, bucket, sub_area):
    _, _, _, records = sub_area
    key = os.path.basename(records[0]["local_path"])
    with open_granule(f"s3://{bucket}/{key}", "h5coro") as granule:
        assert granule.beams()
        assert granule._h5.driver.client.meta.endpoint_url == s3_env  # h5coro took the endpoint from the env
    for url, reason in ((f"s3://{bucket}/nope.h5", "object not found"),
                        (f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/{key}", "bucket not found")):
        for reader in ("h5coro", "h5py"):
            with pytest.raises(GranuleError) as info:
                open_granule(url, reader).close()
            assert "not found" in info.value.reason, (reader, info.value.reason)
            assert not info.value.transient
            if reader == "h5coro":
                assert info.value.reason.startswith(reason)


def test_unreachable_endpoint_is_transient(s3_env, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", dead)
    # s3fs retries a refused connection for ~11 s by default; one attempt is enough here
    for reader, options in (("h5coro", None), ("h5py", {"config_kwargs": {"retries": {"max_attempts": 1}}})):
        with pytest.raises(GranuleError) as info:
            open_granule("s3://some-bucket/g.h5", reader, options).close()
        assert info.value.transient, (reader, info.value.reason)
        assert "EndpointConnectionError" in info.value.reason


@pytest.mark.parametrize(
    ("code", "status", "transient", "words"),
    [("NoSuchKey", 404, False, "not found"), ("AccessDenied", 403, False, "access denied"),
     ("SlowDown", 503, True, "busy"), ("InternalError", 500, True, "busy"), ("InvalidRange", 416, False, "range")],
)
def test_s3_client_errors_map_to_reasons(code, status, transient, words):
    from botocore.exceptions import ClientError

    exc = ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                      "GetObject")
    err = read.classify_s3_error(exc, "b", "k.h5")
    assert err.transient is transient and words in err.reason and "s3://b/k.h5" in err.reason


def test_s3_timeouts_are_transient():
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    for exc in (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), EndpointConnectionError(endpoint_url="x"),
                TimeoutError("timed out")):
        assert read.classify_s3_error(exc, "b", "k").transient


def test_cubed_intermediates_of_an_s3_store_live_next_to_it_and_are_removed(tmp_path, sub_area, bucket,
                                                                          moto_server_log, monkeypatch):
    """On `processes` (Cubed writes its intermediate arrays, unlike the in-process executors), a run whose
    store is on S3 keeps Cubed's work folder at `<store>.cubed` in the bucket, not on the client's disk,
    and removes it after success; the store equals the one computed with a local store."""
    doc, parents, order, records = sub_area
    local_tmp = tmp_path / "client-tmp"
    local_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(local_tmp))
    catalog = build_catalog(_s3_records(records, bucket), parents, order, access="direct")
    recipe = _recipe(doc, catalog, tmp_path / "s3.parquet", "h5py")
    polaragg.run(recipe, store=str(tmp_path / "local.zarr"), executor="threads", progress=False)
    store = f"s3://{bucket}/proc.zarr"
    # A client process of its own: `processes` forks workers from a fork server that keeps the environment
    # it started with, and this session's may predate the local S3 settings.
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json", by_alias=True)))
    cli = Path(sys.executable).with_name("polaragg")
    done = subprocess.run([str(cli), "run", str(path), "--store", store, "--executor", "processes", "--workers", "2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_same_store(open_store(store).load(), open_store(str(tmp_path / "local.zarr")).load())
    log = re.sub(r"\x1b\[[0-9;]*m", "", moto_server_log.read_text(errors="replace"))
    assert re.search(rf'"PUT /{re.escape(bucket)}/proc\.zarr\.cubed/', log), "Cubed wrote nothing next to the store"
    keys = [o["Key"] for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    assert not [k for k in keys if k.startswith("proc.zarr.cubed/")]  # removed after success
    assert not list(local_tmp.glob("polaragg-cubed*"))  # nothing of Cubed's on the client's disk
