"""Execute notebooks/02_change.ipynb end to end on a small multi-cycle synthetic recipe with a pyramid.

The notebook's printed numbers are checked against the store it wrote, read here independently with
xarray (fitted cells, the region's counts, the pyramid's totals).
"""

import re
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import execute_notebook

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02_change.ipynb"
CYCLES = [19, 20, 21, 22]
BBOX = [85.0, -87.2, 95.0, -85.6]  # a small box near the pole: 8 parent cells of order 6
CHILD_ORDER, PARENT_ORDER, COARSEST = 11, 6, 4


def _recipe(cache: str) -> dict:
    return {
        "name": "change-nb",
        "description": "small synthetic multi-cycle recipe of tests/test_change_notebook.py",
        "source": {"kind": "synthetic", "seed": 7, "cycles": CYCLES,
                   "rgts": {"start": 1, "stop": 1388, "step": 18}, "regions": [11], "bbox": BBOX,
                   "cache_dir": cache},
        "aoi": {"bbox": BBOX},
        "grid": {"parent_order": PARENT_ORDER, "child_order": CHILD_ORDER},
        "executor": {"name": "single-threaded"},
        "output": {"store": "unused.zarr", "coarsest_order": COARSEST},
    }


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


def _number(pattern: str, text: str, kind=int):
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not found in the notebook's outputs"
    return kind(match.group(1))


def test_change_notebook_runs_and_its_numbers_match_the_store(tmp_path, monkeypatch):
    import xarray as xr
    import yaml

    stored = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [c for c in stored.cells if c.cell_type == "code"]
    cleared = all(not c.get("outputs") and c.get("execution_count") is None for c in code_cells)
    assert code_cells and cleared, "save the notebook without outputs"
    assert 'os.environ.get("POLARAGG_RECIPE", "../recipes/demo.yaml")' in code_cells[0].source

    recipe_file = tmp_path / "change.yaml"
    recipe_file.write_text(yaml.safe_dump(_recipe(str(tmp_path / "cache"))))
    out = tmp_path / "out"
    monkeypatch.delenv("POLARAGG_EXECUTOR", raising=False)
    started = time.perf_counter()
    nb = execute_notebook(NOTEBOOK, recipe_file, tmp_path, monkeypatch)
    print(f"notebook executed in {time.perf_counter() - started:.1f} s")

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    text = "\n".join(_text(c) for c in code)

    store = out / "change-nb-change.zarr"
    assert store.is_dir()
    ds = xr.open_zarr(str(store), decode_times=False).load()
    assert ds.sizes["time"] == len(CYCLES)

    # Fitted cells: printed, positive, and the store's own count of fit_status == 0.
    status = ds["fit_status"].values
    n_fitted = _number(r"fitted cells \(fit_status == 0\): (\d+) of \d+ cells with data", text)
    assert n_fitted > 0 and n_fitted == int((status == 0).sum())
    with_data = _number(r"fitted cells \(fit_status == 0\): \d+ of (\d+) cells with data", text)
    assert with_data == int((ds["count"].values.sum(axis=0) > 0).sum())
    has = ds["count"].values.sum(axis=0) > 0
    attrs = ds["fit_status"].attrs
    for code_value, name in zip(attrs["flag_values"], attrs["flag_meanings"].split()):
        assert _number(rf"{code_value} {name}\s+(\d+)", text) == int(((status == code_value) & has).sum())

    # The region: its parent cell(s), its merged count equal to the sum over its cells (computed here).
    match = re.search(r"region: parent cell\(s\) \[([\d, ]+)\] \(order (\d+)\), (\d+) cells, (\d+) fitted, "
                      r"(\d+) fitted with data in every bin", text)
    assert match, "the region line is missing"
    parents = np.array([int(p) for p in match.group(1).split(",")], np.uint64)
    assert int(match.group(2)) == PARENT_ORDER
    ids = ds.cell_ids.values
    inside = np.isin(ids >> np.uint64(2 * (CHILD_ORDER - PARENT_ORDER)), parents)
    assert int(match.group(3)) == inside.sum() == parents.size * 4 ** (CHILD_ORDER - PARENT_ORDER)
    assert int(match.group(4)) == int(((status == 0) & inside).sum()) > 0
    complete = (status == 0) & inside & (ds["count"].values > 0).all(axis=0)
    assert int(match.group(5)) == int(complete.sum()) > 0
    merged = _number(r"region merged count: (\d+) \(sum over its cells: \d+\)", text)
    assert merged == int(ds["count"].values[:, inside].sum()) > 0
    assert _number(r"region merged count: \d+ \(sum over its cells: (\d+)\)", text) == merged
    assert "equal: True" in text and "merged weight sum_w equals the cells' sum: True" in text
    # ... its one-cell fit is the pyramid's cell at the parent order; (a)'s rate is the mean of the cells'.
    assert f"(b) equals the pyramid's order-{PARENT_ORDER} cell {int(parents[0])}: True" in text
    area_rate = _number(r"\(a\) \d+ cells: mean dh/dt = (-?[\d.]+) \+/-", text, float)
    assert area_rate == pytest.approx(float(ds["dhdt"].values[complete].mean()), abs=1e-3)

    # The synthetic truth: most fitted cells within 3 sigma.
    within3 = _number(r"within 3 sigma ([\d.]+)%", text, float)
    assert within3 >= 90.0

    # The pyramid: every order's counts equal the child order's, printed and recomputed here.
    child_total = _number(r"child order \d+ total count: (\d+)", text)
    coarse_total = _number(rf"coarsest order {COARSEST} total count: (\d+)", text)
    top = xr.open_zarr(str(store), group=str(COARSEST), decode_times=False).load()
    assert child_total == coarse_total == int(ds["count"].sum()) == int(top["count"].sum()) > 0
    np.testing.assert_array_equal(top["count"].values.sum(axis=1), ds["count"].values.sum(axis=1))
    assert "equal in every bin at every order: True" in text

    # Figures: AOI and region maps, the cell's and the region's series, truth, coarse maps; all inline.
    images = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 9
    for name in ("dhdt_aoi.png", "region_dhdt.png", "region_dhdt_sigma.png", f"h_mean_order{COARSEST}.png"):
        assert (out / name).stat().st_size > 10_000, name
