"""Every error a user can cause is one line naming the field, file, bucket or service (no traceback),
and creates nothing."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from polaragg.cli import build_parser, main
from polaragg.ledger import LEDGER_SUFFIX

SUB_BBOX = [85.0, -87.0, 95.0, -85.0]


@pytest.fixture
def recipe_doc(demo_recipe):
    doc = demo_recipe.model_dump(mode="json", by_alias=True)
    doc["aoi"] = {"bbox": SUB_BBOX}
    return doc


def _write(tmp_path: Path, doc: dict, name: str = "recipe.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if not line.startswith("polaragg: warning:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("field, value, named", [
    (("executor", "memory_per_task"), "lots", "executor.memory_per_task"),
    (("aoi",), {"polygon": [[0, -80], [10, -80]]}, "aoi.polygon"),
    (("aoi",), {"bbox": [170, -80, 200, -70]}, "aoi.bbox"),
    (("aoi",), {"basins": []}, "aoi.basins"),
    (("grid", "child_order"), 3, "grid"),
    (("name",), "../../etc", "name"),
])
def test_invalid_recipe_fields_are_named_in_one_line(field, value, named, recipe_doc, tmp_path, capsys):
    target = recipe_doc
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = value
    store = tmp_path / "never.zarr"
    assert main(["run", _write(tmp_path, recipe_doc), "--store", str(store)]) == 2
    line = _one_line_error(capsys)
    assert named in line
    assert not store.exists() and not Path(str(store) + LEDGER_SUFFIX).exists()


def test_a_recipe_file_that_is_not_yaml_by_name_or_too_long_is_refused(recipe_doc, tmp_path, capsys):
    text = tmp_path / "recipe.txt"
    text.write_text(yaml.safe_dump(recipe_doc))
    assert main(["plan", str(text)]) == 2
    assert "must be YAML" in _one_line_error(capsys)
    huge = dict(recipe_doc, description="x" * 2_000_000)
    assert main(["plan", _write(tmp_path, huge)]) == 2
    assert "at most" in _one_line_error(capsys)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: a\nsource: [unclosed\n")
    assert main(["plan", str(broken)]) == 2
    assert "not valid YAML at line" in _one_line_error(capsys)


def test_a_plan_above_the_cell_limit_is_refused_with_its_size(recipe_doc, tmp_path, capsys):
    recipe_doc["output"]["max_cells"] = 10_000
    assert main(["plan", _write(tmp_path, recipe_doc)]) == 2
    line = _one_line_error(capsys)
    n_parents = 8  # SUB_BBOX covers 8 order-6 cells (tests/test_production.py checks the same box)
    assert f"{n_parents * 4096:,} cells" in line and "output.max_cells" in line


def test_an_aoi_without_granules_warns_and_runs_empty(recipe_doc, tmp_path, capsys):
    recipe_doc["aoi"] = {"bbox": [-70.0, -72.0, -65.0, -70.0]}  # the Antarctic Peninsula: no demo granule
    store = tmp_path / "empty.zarr"
    assert main(["run", _write(tmp_path, recipe_doc), "--store", str(store), "--executor", "single-threaded"]) == 0
    err = capsys.readouterr().err
    assert "warning: no granule crosses the AOI" in err


@pytest.mark.parametrize("content, why", [("{not json", "not valid JSON"),
                                          (json.dumps({"hello": 1}), "not a polaragg task record")])
def test_malformed_or_foreign_ledger_records_are_named(content, why, demo_store, tmp_path, capsys):
    import shutil

    store = tmp_path / "copy.zarr"
    shutil.copytree(demo_store[0], store)
    shutil.copytree(demo_store[0] + LEDGER_SUFFIX, str(store) + LEDGER_SUFFIX)
    bad = Path(str(store) + LEDGER_SUFFIX) / f"{1:020d}-{0:05d}.json"
    bad.write_text(content)
    for command in ("status", "validate"):
        assert main([command, str(store)]) == 2
        line = _one_line_error(capsys)
        assert str(bad) in line and why in line


def _mount(tmp_path: Path, name: str, options: str) -> Path:
    where = tmp_path / name
    where.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()})")
    return where


def test_a_read_only_folder_and_a_full_disk_give_one_line(recipe_doc, tmp_path, capsys):
    recipe = _write(tmp_path, recipe_doc)
    ro = _mount(tmp_path, "ro", "ro,size=1m")
    full = _mount(tmp_path, "full", "size=96k")
    try:
        assert main(["run", recipe, "--store", str(ro / "x.zarr"), "--executor", "single-threaded"]) == 2
        assert "read-only" in _one_line_error(capsys)
        assert main(["run", recipe, "--store", str(full / "x.zarr"), "--executor", "single-threaded"]) == 2
        line = _one_line_error(capsys)
        assert "no space left" in line and str(full) in line
    finally:
        subprocess.run(["umount", str(ro)])
        subprocess.run(["umount", str(full)])


def test_a_missing_bucket_is_named(recipe_doc, tmp_path, capsys, s3_env):
    assert main(["run", _write(tmp_path, recipe_doc), "--store", "s3://no-such-bucket-here/x.zarr",
                 "--executor", "single-threaded"]) == 2
    line = _one_line_error(capsys)
    assert "no-such-bucket-here" in line and "does not exist" in line


@pytest.fixture
def auth_moto(tmp_path, monkeypatch):
    """A second moto server that checks credentials (unknown keys are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 30
    while True:
        try:
            opener.open(f"{url}/moto-api/", timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "moto_server did not start"
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_bad_s3_credentials_are_one_line_without_the_secret(recipe_doc, tmp_path, capsys, s3_env, auth_moto,
                                                            monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", auth_moto)
    monkeypatch.setenv("AWS_ENDPOINT_URL", auth_moto)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value-123")
    assert main(["run", _write(tmp_path, recipe_doc), "--store", "s3://some-bucket/x.zarr",
                 "--executor", "single-threaded"]) == 2
    line = _one_line_error(capsys)
    assert "some-bucket" in line and ("credentials" in line or "denied" in line)
    assert "very-secret-value-123" not in line


def test_every_command_line_option_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = [f"{name} {action.dest}" for name, p in sub.choices.items() for action in p._actions
               if action.dest != "help" and not action.help]
    missing += [a.dest for a in parser._actions if a.dest not in ("help", "command") and not a.help]
    assert missing == []


def test_plan_shows_the_recipes_executor(recipe_doc, tmp_path, capsys):
    recipe_doc["executor"]["name"] = "dask"
    assert main(["plan", _write(tmp_path, recipe_doc)]) == 0
    out = capsys.readouterr().out
    assert "executor:            dask" in out
    assert re.search(r"\| executor\s+\| dask \|", out)
    planned = re.search(r"expected obs\.:\s+([\d,]+)", out).group(1)
    estimated = re.search(r"\| observations\s+\| ([\d,]+) \|", out).group(1)
    assert planned == estimated


def test_an_unreachable_cloud_executor_is_one_line_and_creates_nothing(recipe_doc, tmp_path, capsys, monkeypatch):
    import dask

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket closes
    store = tmp_path / "never.zarr"
    started = time.monotonic()
    with dask.config.set({"coiled.server": f"http://127.0.0.1:{port}", "coiled.token": "t"}):
        assert main(["run", _write(tmp_path, recipe_doc), "--store", str(store), "--executor", "coiled"]) == 2
    assert time.monotonic() - started < 10
    line = _one_line_error(capsys)
    assert "Coiled (127.0.0.1) is not reachable" in line
    assert not store.exists() and not Path(str(store) + LEDGER_SUFFIX).exists()


def test_resume_names_a_granule_added_since_the_run_began(demo_cache, tmp_path, capsys):
    import shutil

    import polaragg

    recipe = demo_cache[1].model_copy(update={"aoi": demo_cache[1].aoi.model_copy(update={"bbox": tuple(SUB_BBOX)})})
    names = sorted({g.url.rsplit("/", 1)[-1].removesuffix(".h5")
                    for t in polaragg.runner.plan_recipe(recipe).tasks for g in t.granules})
    work = tmp_path / "granules"
    work.mkdir()
    for name in names[1:]:
        shutil.copy(demo_cache[0] / f"{name}.umm.json", work / f"{name}.umm.json")
        (work / f"{name}.h5").symlink_to(demo_cache[0] / f"{name}.h5")
    doc = recipe.model_dump(mode="json", by_alias=True)
    doc["source"] = {"kind": "directory", "path": str(work)}
    path = _write(tmp_path, doc)
    store = str(tmp_path / "out.zarr")
    assert main(["run", path, "--store", store, "--executor", "single-threaded"]) == 0
    shutil.copy(demo_cache[0] / f"{names[0]}.umm.json", work / f"{names[0]}.umm.json")
    (work / f"{names[0]}.h5").symlink_to(demo_cache[0] / f"{names[0]}.h5")
    capsys.readouterr()
    assert main(["run", path, "--store", store, "--resume"]) == 2
    added = json.loads((work / f"{names[0]}.umm.json").read_text())["meta"]["concept-id"]
    line = _one_line_error(capsys)
    assert "1 granule(s) added" in line and added in line
