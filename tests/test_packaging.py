"""environment.yml (conda-forge) lists what `pip install -e ".[test]"` installs, with equal lower bounds."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# pyproject requirement (normalised name, extras) -> the conda-forge packages that provide it.
CONDA_NAMES = {
    "dask[array]": ["dask"],  # conda-forge's dask brings numpy (and distributed)
    "isal": ["python-isal"],  # conda-forge names the ISA-L bindings python-isal
    # conda-forge's moto has no extras; moto_server needs flask and flask-cors
    "moto[server]": ["moto", "flask", "flask-cors"],
}
# Packages environment.yml lists that are not themselves pyproject requirements.
CONDA_ONLY = {"python", "pip", "flask", "flask-cors"}

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?\s*(.*?)\s*(?:;.*)?$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse(spec: str) -> tuple[str, tuple[str, ...], str | None]:
    """`name[extra,...] >=1.2,<3` or the conda form `name >=1.2` -> (name, extras, lower bound or None)."""
    match = _REQ.match(spec)
    assert match, f"cannot parse requirement {spec!r}"
    name, extras, constraint = match.groups()
    lower = [c.strip()[2:].strip() for c in constraint.split(",") if c.strip().startswith(">=")]
    assert len(lower) <= 1, f"{spec!r}: more than one lower bound"
    extras_t = tuple(sorted(_norm(e) for e in (extras or "").split(",") if e.strip()))
    return _norm(name), extras_t, (lower[0] if lower else None)


def _pyproject_requirements() -> dict[str, str | None]:
    """Everything `pip install -e ".[test]"` asks for: runtime + test extra, self-references expanded."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    own = _norm(project["name"])
    extras = project.get("optional-dependencies", {})
    found: dict[str, str | None] = {}
    seen: set[str] = set()

    def add(specs: list[str]) -> None:
        for spec in specs:
            name, req_extras, lower = _parse(spec)
            if name == own:
                for extra in req_extras:
                    if extra not in seen:
                        seen.add(extra)
                        add(extras[extra])
                continue
            key = f"{name}[{','.join(req_extras)}]" if req_extras else name
            assert key not in found, f"{key} required twice in pyproject.toml"
            found[key] = lower

    add(project["dependencies"])
    seen.add("test")
    add(extras["test"])
    return found


def _environment() -> dict[str, str | None]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env.get("channels") == ["conda-forge"]
    found: dict[str, str | None] = {}
    for entry in env["dependencies"]:
        specs = entry["pip"] if isinstance(entry, dict) else [entry]
        for spec in specs:
            name, extras, lower = _parse(spec)
            assert not extras, f"environment.yml: {spec!r} has extras"
            assert name not in found, f"environment.yml lists {name} twice"
            found[name] = lower
    return found


def test_pyproject_is_parsed_whole():
    """Guards the checks below against a parser that silently finds nothing."""
    reqs = _pyproject_requirements()
    for key in ("numpy", "zarr", "dask[array]", "distributed", "s3fs", "moto[server]", "coiled", "pytest"):
        assert key in reqs, key


def test_python_matches():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    assert _environment()["python"] == "3.11"


@pytest.mark.parametrize("requirement", sorted(_pyproject_requirements()))
def test_environment_has_every_pyproject_requirement_with_its_lower_bound(requirement):
    lower = _pyproject_requirements()[requirement]
    env = _environment()
    names = CONDA_NAMES.get(requirement, [requirement])
    missing = [n for n in names if n not in env]
    assert not missing, f"environment.yml lacks {', '.join(missing)} (for {requirement})"
    assert env[names[0]] == lower, (
        f"{requirement}: pyproject.toml says >={lower}, environment.yml says >={env[names[0]]}"
    )


def test_environment_lists_nothing_pyproject_does_not():
    wanted = {n for req in _pyproject_requirements() for n in CONDA_NAMES.get(req, [req])} | CONDA_ONLY
    extra = sorted(set(_environment()) - wanted)
    assert not extra, f"environment.yml lists {extra}, which pyproject.toml does not require"
