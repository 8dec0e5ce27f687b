"""The cloud rehearsal: a whole run as it would go in the cloud, on this machine.

Granules, store, partitions and Cubed's work_dir sit in a local S3 (moto) behind a proxy that refuses
any request without a current session token; tokens come from a local Earthdata-style `s3credentials`
endpoint and expire after a few seconds, so the run outlives several of them. The client runs as a
process of its own with an empty home, working and temporary folder and no AWS identity of its own
but the key of Lithops' scratch bucket. Two executors, as in the cloud:

- `lithops-local` with Lithops' job data in that S3 (as on Lambda), workers renewing credentials
  themselves (`workers_refresh`, as Lambda workers must);
- `dask-distributed` on a scheduler and workers started as separate processes that share no folder
  with the client (as on Coiled), getting refreshed credentials pushed by the client.

Each run must give the store of a plain local run, rotate tokens at least twice, leave none of the
secrets in any log, ledger record, store attribute or leftover object, and write nothing on the
client's disk but its logs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
import yaml

import polaragg
from polaragg.catalog import build_catalog
from polaragg.store import open_store

try:
    from auth_s3 import CredentialsEndpoint, TokenCheckingProxy
    from test_s3 import _assert_same_store, _recipe, _s3_records
except ImportError:  # run as a package
    from tests.auth_s3 import CredentialsEndpoint, TokenCheckingProxy
    from tests.test_s3 import _assert_same_store, _recipe, _s3_records

LIFETIME_S = 8.0  # each token's life: the runs take several
MARGIN_S = 5.0  # renewed this long before expiry: every S3 client made with one lives >= 5 s (a push may
# reach a busy 2-core machine's Dask workers seconds late)
ACCOUNT_KEY = "AKIAREHEARSALACCOUNT"  # the account's own key: Lithops' scratch bucket only
ACCOUNT_SECRET = "rehearsal-account-secret-" + uuid.uuid4().hex
BIN = Path(sys.executable).parent
AREA = [80.0, -84.0, 80.6, -83.8]  # a corner of the demo
GRANULES = 5  # of the granules crossing it (the reference run reads the same)


@pytest.fixture(scope="module")
def sub_area(demo_cache):
    """The demo recipe over AREA, and the local UMM-G records of the granules touching it."""
    from polaragg.catalog import read_directory
    from polaragg.sources import aoi_parents

    folder, recipe = demo_cache
    doc = {**recipe.model_dump(mode="json"), "aoi": {"bbox": AREA}}
    sub = polaragg.load_recipe(doc)
    parents, order = aoi_parents(sub), sub.grid.parent_order
    records = read_directory(folder)
    local = build_catalog(records, parents, order)
    touching = set(local.granules.name[local.granules.parent_cells.map(len) > 0])
    records = sorted((r for r in records if r["umm"]["GranuleUR"] in touching), key=lambda r: r["umm"]["GranuleUR"])
    assert len(records) >= GRANULES
    return doc, parents, order, records[:GRANULES]


@pytest.fixture
def cloud(s3_env, sub_area, tmp_path):
    """Buckets (granules, store, Lithops scratch) in moto; the credentials endpoint and the proxy."""
    _, _, _, records = sub_area
    names = {k: f"rehearsal-{k}-{uuid.uuid4().hex[:8]}" for k in ("granules", "store", "lithops")}
    direct = boto3.client("s3")  # straight to moto: the test's own setup and inspection
    for name in names.values():
        direct.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    for record in records:
        direct.upload_file(record["local_path"], names["granules"], os.path.basename(record["local_path"]))
    bearer = "edl-token-" + uuid.uuid4().hex
    with CredentialsEndpoint(LIFETIME_S, bearer) as endpoint, TokenCheckingProxy(s3_env, endpoint) as proxy:
        proxy.allow_static(ACCOUNT_KEY, names["lithops"])
        yield {"names": names, "endpoint": endpoint, "proxy": proxy, "direct": direct, "bearer": bearer}


def _isolated_env(home: Path, proxy: TokenCheckingProxy, **extra: str) -> dict[str, str]:
    """An environment with nothing of this machine's: own home and temporary folder, S3 through the proxy."""
    for folder in (home, home / "tmp"):
        folder.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home / "tmp"), "LANG": "C.UTF-8",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "AWS_ENDPOINT_URL_S3": proxy.url, "AWS_ENDPOINT_URL": proxy.url,
        "AWS_REGION": "us-west-2", "AWS_DEFAULT_REGION": "us-west-2", "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(home / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-creds"),
        "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg",
    }
    env.update(extra)
    return env


def _objects(client, bucket: str) -> dict[str, bytes]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            out[o["Key"]] = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _secrets_in(blobs: dict[str, bytes], secrets: list[str]) -> list[str]:
    found = []
    for name, blob in blobs.items():
        for secret in secrets:
            if secret.encode() in blob:
                found.append(f"{name} holds a secret ({secret[:4]}...)")
    return found


def _reference(tmp_path, sub_area):
    doc, parents, order, records = sub_area
    recipe = _recipe(doc, build_catalog(records, parents, order), tmp_path / "local.parquet", "h5coro")
    polaragg.run(recipe, store=str(tmp_path / "local.zarr"), executor="threads", progress=False)
    return doc, parents, order, records, open_store(str(tmp_path / "local.zarr")).load()


def _rehearse(tmp_path, sub_area, cloud, executor: dict, workers_refresh: bool, client_env: dict[str, str]):
    """Run the client in its own process; return (summary of what it left, reference store)."""
    doc, parents, order, records, want = _reference(tmp_path, sub_area)
    names, endpoint, proxy = cloud["names"], cloud["endpoint"], cloud["proxy"]
    inputs = tmp_path / "inputs"  # what the user brings: the recipe and its catalog
    inputs.mkdir()
    catalog = build_catalog(_s3_records(records, names["granules"]), parents, order, access="direct")
    recipe = _recipe(doc, catalog, inputs / "catalog.parquet", "h5coro").model_dump(mode="json", by_alias=True)
    store = f"s3://{names['store']}/rehearsal.zarr"
    earthdata = {"source": "earthdata", "endpoint": endpoint.url, "refresh_margin_s": MARGIN_S,
                 "workers_refresh": workers_refresh}
    recipe["credentials"] = {"granules": earthdata, "store": earthdata}
    recipe["executor"] = {**recipe["executor"], "work_dir": f"s3://{names['store']}/work", **executor}
    recipe["output"] = {**recipe["output"], "store": store}
    (inputs / "recipe.yaml").write_text(yaml.safe_dump(recipe))

    client = tmp_path / "client"
    logs = tmp_path / "logs"
    logs.mkdir()
    env = _isolated_env(client, proxy, AWS_ACCESS_KEY_ID=ACCOUNT_KEY, AWS_SECRET_ACCESS_KEY=ACCOUNT_SECRET,
                        EARTHDATA_TOKEN=cloud["bearer"], **client_env)
    fetches_before, start = endpoint.fetches, time.monotonic()
    with open(logs / "client.out", "wb") as out, open(logs / "client.err", "wb") as err:
        done = subprocess.run([str(BIN / "polaragg"), "--debug", "run", str(inputs / "recipe.yaml"), "--workers", "2"],
                              cwd=client, env=env, stdout=out, stderr=err, timeout=240)
    seconds = time.monotonic() - start
    assert done.returncode == 0, (logs / "client.err").read_text()[-3000:] + str(proxy.refused[:10])
    return {"store": store, "want": want, "seconds": seconds, "fetches": endpoint.fetches - fetches_before,
            "client": client, "logs": logs}


def _check_afterwards(result, cloud, extra_disk: dict[str, bytes] | None = None, allowed_on_client=()):
    names, endpoint, proxy, direct = cloud["names"], cloud["endpoint"], cloud["proxy"], cloud["direct"]
    _assert_same_store(open_store(result["store"]).load(), result["want"])
    # tokens rotated at least twice during the run, and it outlived several of their lifetimes
    assert result["fetches"] >= 3, result
    assert result["seconds"] > LIFETIME_S, result["seconds"]
    assert len(proxy.tokens_seen) >= 3
    assert not proxy.refused, proxy.refused[:5]  # no task ever sent an expired or missing token
    # every object left in any bucket, every log and every file the client wrote: no secret anywhere
    stored, scratch = _objects(direct, names["store"]), _objects(direct, names["lithops"])
    # intermediates removed: Cubed's work_dir, the partitions, Lithops' job data (its runtime cache stays)
    assert not [k for k in stored if k.startswith("work/") or k.startswith("rehearsal.zarr.partitions/")]
    assert not [k for k in scratch if not k.startswith("lithops.runtimes/")], sorted(scratch)[:10]
    leftovers = {**{f"s3://{names['store']}/{k}": v for k, v in stored.items()},
                 **{f"s3://{names['lithops']}/{k}": v for k, v in scratch.items()}}
    client_files = _files(result["client"])
    secrets = endpoint.secrets() + [ACCOUNT_SECRET]
    blobs = {**leftovers, **{f"log:{k}": v for k, v in _files(result["logs"]).items()},
             **{f"client:{k}": v for k, v in client_files.items()}, **(extra_disk or {})}
    assert not _secrets_in(blobs, secrets)
    # nothing on the client's disk (its home, working and temporary folders) but what the executor keeps there
    assert not [k for k in client_files if not k.startswith(tuple(allowed_on_client))], sorted(client_files)[:20]


def test_rehearsal_lithops_storage_in_s3_workers_renew_their_credentials(tmp_path, sub_area, cloud):
    result = _rehearse(tmp_path, sub_area, cloud, {"name": "lithops-local",
                                                   "lithops_storage_bucket": cloud["names"]["lithops"]},
                       workers_refresh=True, client_env={})
    # Lithops' local workers are this machine's processes: their scratch (under the client's temporary
    # folder, as Lithops puts it) stands for the Lambda sandbox; it is scanned for secrets too. Lithops'
    # client keeps its cache of the runtime's metadata (Python and package versions) in ~/.lithops.
    _check_afterwards(result, cloud, allowed_on_client=("tmp/lithops-", ".lithops/cache/lithops.runtimes/"))


@pytest.fixture
def separate_cluster(cloud, tmp_path):
    """A Dask scheduler and two single-threaded workers, each a process of its own with its own home and
    temporary folder (nothing shared with the client), S3 through the proxy and no AWS identity at all."""
    home = tmp_path / "cluster"
    env = _isolated_env(home, cloud["proxy"])
    logs = tmp_path / "cluster-logs"
    logs.mkdir()
    scheduler_file = home / "scheduler.json"
    procs = []
    try:
        procs.append(subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                       "--no-dashboard", "--scheduler-file", str(scheduler_file)], cwd=home, env=env,
                                      stdout=open(logs / "scheduler.out", "wb"), stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert scheduler_file.exists(), (logs / "scheduler.out").read_text()[-2000:]
        procs.append(subprocess.Popen([str(BIN / "dask"), "worker", "--scheduler-file", str(scheduler_file),
                                       "--nworkers", "2", "--nthreads", "1", "--no-dashboard",
                                       "--local-directory", str(home / "tmp")], cwd=home, env=env,
                                      stdout=open(logs / "workers.out", "wb"), stderr=subprocess.STDOUT))
        from distributed import Client

        with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            address = client.scheduler.address
        yield {"address": address, "home": home, "logs": logs}
    finally:
        for proc in reversed(procs):
            proc.kill()
        for proc in procs:
            proc.wait(timeout=20)


def test_rehearsal_dask_workers_in_processes_of_their_own_get_refreshed_credentials(tmp_path, sub_area, cloud,
                                                                                    separate_cluster):
    result = _rehearse(tmp_path, sub_area, cloud, {"name": "dask-distributed",
                                                   "scheduler": separate_cluster["address"]},
                       workers_refresh=False, client_env={})
    cluster_disk = {f"cluster:{k}": v for k, v in _files(separate_cluster["home"]).items()}
    cluster_disk.update({f"cluster-log:{k}": v for k, v in _files(separate_cluster["logs"]).items()})
    _check_afterwards(result, cloud, extra_disk=cluster_disk)
