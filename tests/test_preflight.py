"""Preflight: each failure is one line naming what to fix, within seconds, and creates nothing.

Through the real command line (`polaragg check` and `polaragg run`) against real parts: a local
Earthdata-style credentials endpoint, moto S3, a Dask scheduler. The Python-mismatch check compares
against the versions another interpreter on this machine reports.
"""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import boto3
import pytest
import yaml

from polaragg import preflight

try:
    from auth_s3 import CredentialsEndpoint
except ImportError:
    from tests.auth_s3 import CredentialsEndpoint

CLI = Path(sys.executable).with_name("polaragg")


def _recipe_file(demo_recipe, tmp_path: Path, **changes) -> Path:
    doc = demo_recipe.model_dump(mode="json", by_alias=True)
    for section, values in changes.items():
        doc[section] = {**doc.get(section, {}), **values}
    path = tmp_path / f"recipe-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _cli(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=60, env=env)
    return done, time.monotonic() - start


def _assert_one_line_failure(done: subprocess.CompletedProcess, seconds: float, *needles: str) -> str:
    assert done.returncode != 0, done.stdout + done.stderr
    assert seconds < 10, seconds
    line = done.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line  # one line
    for needle in needles:
        assert needle in line, line
    return line


def _nothing_in(bucket: str) -> list[str]:
    listing = boto3.client("s3").list_objects_v2(Bucket=bucket)
    return [o["Key"] for o in listing.get("Contents", [])]


@pytest.fixture
def store_bucket(s3_env):
    name = f"preflight-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    return name


@pytest.mark.parametrize("lifetime, needle", [(-60.0, "already expired"), (30.0, "within refresh_margin_s")])
def test_expired_or_expiring_credentials_stop_the_run_before_anything_is_made(demo_recipe, tmp_path, store_bucket,
                                                                             monkeypatch, lifetime, needle):
    with CredentialsEndpoint(60, "edl-" + uuid.uuid4().hex) as endpoint:
        endpoint.lifetime_s = lifetime
        monkeypatch.setenv("EARTHDATA_TOKEN", endpoint.bearer_token)
        store = f"s3://{store_bucket}/out.zarr"
        recipe = _recipe_file(demo_recipe, tmp_path, output={"store": store},
                              credentials={"store": {"source": "earthdata", "endpoint": endpoint.url}})
        done, seconds = _cli("run", str(recipe))
        line = _assert_one_line_failure(done, seconds, "credentials.store", needle)
        assert endpoint.bearer_token not in line and not any(s in done.stdout + line for s in endpoint.secrets())
        checked, _ = _cli("check", str(recipe))
        assert checked.returncode == 1 and "[FAIL] credentials.store" in checked.stdout, checked.stdout
        assert "[ok  ] store" in checked.stdout  # the other checks still ran
    assert _nothing_in(store_bucket) == []


def test_an_unwritable_store_is_named(demo_recipe, tmp_path, s3_env):
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    recipe = _recipe_file(demo_recipe, tmp_path, output={"store": f"s3://{bucket}/out.zarr"})
    done, seconds = _cli("run", str(recipe))
    _assert_one_line_failure(done, seconds, bucket, "does not exist")
    checked, _ = _cli("check", str(recipe))
    assert checked.returncode == 1 and f"[FAIL] store: s3://{bucket}/out.zarr is not writable" in checked.stdout
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    recipe = _recipe_file(demo_recipe, tmp_path, output={"store": str(blocker / "sub" / "out.zarr")})
    done, seconds = _cli("run", str(recipe))
    _assert_one_line_failure(done, seconds, str(blocker))
    checked, _ = _cli("check", str(recipe))
    assert checked.returncode == 1 and f"[FAIL] store: {blocker / 'sub' / 'out.zarr'} cannot be made: {blocker} is a " \
        "file" in checked.stdout, checked.stdout
    assert blocker.read_text() == "not a folder"


def test_an_unreachable_scheduler_is_named_within_seconds(demo_recipe, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tmp_path / "out.zarr"
    recipe = _recipe_file(demo_recipe, tmp_path, output={"store": str(store)},
                          executor={"name": "dask-distributed", "scheduler": f"tcp://127.0.0.1:{port}"})
    done, seconds = _cli("run", str(recipe))
    _assert_one_line_failure(done, seconds, f"tcp://127.0.0.1:{port}", "does not answer")
    assert not list(tmp_path.glob("out.zarr*"))  # no store, ledger, lock or partitions


def test_a_task_budget_above_the_dask_workers_memory_is_refused(demo_recipe, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, memory_limit="300MiB", protocol="tcp://",
                      dashboard_address=None) as cluster:
        recipe = _recipe_file(demo_recipe, tmp_path, output={"store": str(tmp_path / "out.zarr")},
                              executor={"name": "dask-distributed", "scheduler": cluster.scheduler_address,
                                        "memory_per_task": "2GB"})
        done, seconds = _cli("run", str(recipe))
        _assert_one_line_failure(done, seconds, "300 MiB", "executor.memory_per_task")
        checked, _ = _cli("check", str(recipe))
        assert checked.returncode == 1 and "[FAIL] executor dask-distributed" in checked.stdout
        ok = _recipe_file(demo_recipe, tmp_path, output={"store": str(tmp_path / "out.zarr")},
                          executor={"name": "dask-distributed", "scheduler": cluster.scheduler_address,
                                    "memory_per_task": "200MB"})
        passed, _ = _cli("check", str(ok))
        assert passed.returncode == 0, passed.stdout + passed.stderr  # same versions, enough memory
    assert not list(tmp_path.glob("out.zarr*"))


def _other_python() -> str | None:
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [shutil.which(f"python3.{m}") for m in range(8, 16)]
    candidates += sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.*/bin/python3"))
    for path in filter(None, candidates):
        try:
            out = subprocess.run([path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out and out != mine and tuple(map(int, out.split("."))) >= (3, 8):
            return path
    return None


def test_a_worker_on_another_python_is_refused_naming_both_versions():
    """The versions a runtime reports, taken by the same probe in a real interpreter of another Python minor
    version, fail the comparison with one line naming both."""
    other = _other_python()
    if other is None:
        pytest.skip("no second Python minor version on this machine")
    probe = textwrap.dedent(inspect.getsource(preflight.runtime_versions))
    script = (f"import sys, json\nfrom importlib import metadata\nMATCHED_PACKAGES = {preflight.MATCHED_PACKAGES!r}\n"
              f"{probe}\nprint(json.dumps(runtime_versions()))")
    import json

    theirs = json.loads(subprocess.run([other, "-c", script], capture_output=True, text=True, timeout=30,
                                       check=True).stdout)
    mine = preflight.runtime_versions()
    assert theirs["python"].split(".")[:2] != mine["python"].split(".")[:2]
    line = preflight.version_mismatch(mine, theirs, "the Lambda runtime")
    assert line and "\n" not in line
    assert f"Python {theirs['python']}" in line and f"the client {mine['python']}" in line
    assert preflight.version_mismatch(mine, dict(mine), "x") is None
    differs = {**mine, "numpy": "0.0.1"}
    assert "numpy 0.0.1" in preflight.version_mismatch(mine, differs, "Dask worker w")
