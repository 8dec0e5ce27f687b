"""Recipe loading and validation: errors name the offending field."""

from pathlib import Path

import pytest

from polaragg.recipe import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]


def _demo_text() -> str:
    return (ROOT / "recipes" / "demo.yaml").read_text()


def test_demo_recipe_loads_and_matches_packaged_copy():
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml")
    assert recipe.grid.parent_order == 6 and recipe.grid.child_order == 12
    assert recipe.source.kind == "synthetic"
    packaged = ROOT / "src" / "polaragg" / "recipes" / "demo.yaml"
    assert packaged.read_text() == _demo_text()


@pytest.mark.parametrize(
    "edit, field",
    [
        (("child_order: 12", "child_order: 40"), "grid.child_order"),
        (("child_order: 12", "child_order: 4"), "grid"),
        (("quality_max: 0", "quality_max: high"), "filters.quality_max"),
        (("name: processes", "name: spark"), "executor.name"),
        (("reader: h5py", "reader: netcdf"), "reader"),
        (("kind: synthetic", "kind: ftp"), "source"),
        (("cycles: [19, 20, 21, 22]", "cycles: [0]"), "source.cycles"),
        (("cycles: [19, 20, 21, 22]", "cycles: [22, 22]"), "source.cycles"),
        (("  bins: cycle", "  bins: fortnight"), "time.bins"),
        (("  coarsest_order: 4", "  coarsest_order: 13"), "coarsest_order"),
        (("  bbox: [70.0, -88.0, 110.0, -83.0]\ngrid", "  basins: [1]\n  bbox: [1, 2, 3, 4]\ngrid"), "aoi"),
        (("name: demo", "nmae: demo"), "nmae"),
    ],
)
def test_invalid_recipe_names_the_field(edit, field):
    old, new = edit
    text = _demo_text()
    assert old in text
    with pytest.raises(RecipeError) as info:
        load_recipe(text.replace(old, new, 1))
    assert field in str(info.value)


def test_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe("- just\n- a list\n")
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_fingerprint_ignores_where_and_how_it_runs():
    base = load_recipe(_demo_text())
    moved = load_recipe(_demo_text().replace("name: processes", "name: threads").replace(
        "store: polaragg-out/demo.zarr", "store: elsewhere.zarr"))
    changed = load_recipe(_demo_text().replace("quality_max: 0", "quality_max: 1"))
    assert base.fingerprint() == moved.fingerprint()
    assert base.fingerprint() != changed.fingerprint()
