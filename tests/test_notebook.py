"""Execute notebooks/01_explore.ipynb end to end against the session's demo granules."""

import re
from pathlib import Path

import pytest

from helpers import execute_notebook

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_explore.ipynb"


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


def _number(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not found in the notebook's outputs"
    return int(match.group(1))


def test_explore_notebook_runs_and_reads_each_granule_once(demo_recipe, tmp_path, monkeypatch):
    import yaml

    stored = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in stored.cells if c.cell_type == "code"), "save the notebook without outputs"

    recipe_file = tmp_path / "demo.yaml"
    recipe_file.write_text(yaml.safe_dump(demo_recipe.model_dump(mode="json")))
    out = tmp_path / "out"
    nb = execute_notebook(NOTEBOOK, recipe_file, tmp_path, monkeypatch)

    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    text = "\n".join(_text(c) for c in code)

    # The lazy dataset read nothing; the one-parent slice read every granule of the plan once (the
    # granule stage), more than that parent's footprints list; a second compute opened none.
    assert "granules opened so far: 0" in text
    n_tasks = _number(r"in (\d+) chunks of 4096 cells", text)
    opened = _number(r"granules opened: (\d+)", text)
    expected = _number(r"granules of parent \d+: (\d+)", text)
    total = _number(r"(\d+) granules in the catalog", text)
    assert n_tasks > 1
    assert 0 < expected < opened == total
    assert "each once: True" in text and "every granule of the plan was read: True" in text
    assert _number(r"granules opened by a second compute: (\d+)", text) == 0

    # Region statistics, polygon, comparison and the small run all produced real numbers.
    assert _number(r"(\d+) of 4096 child cells have observations", text) > 0
    assert _number(r"polygon covers (\d+) cells", text) > 0
    slope = float(re.search(r"slope of h_sigma vs count: (-?[\d.]+)", text).group(1))
    assert -0.8 < slope < -0.2
    assert "statistics identical: True" in text

    # Figures: the plan map, two region maps and the matplotlib comparison, displayed inline.
    images = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 4
    assert (out / "region_h_mean.png").stat().st_size > 10_000
    assert (out / "poi.zarr").is_dir()
