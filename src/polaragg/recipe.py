"""The recipe: one validated document naming source, area, grid, filters, output and executor.

`load_recipe(path_or_text)` reads YAML and returns a frozen `Recipe`; invalid input raises
`RecipeError` whose message names each offending field (e.g. `grid.child_order`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .aggregate import Filters, RetryPolicy
from .cloud import CoiledOptions, LambdaOptions
from .grid import Grid


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the fields at fault."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RgtRange(_Model):
    start: Annotated[int, Field(ge=1, le=1387)] = 1
    stop: Annotated[int, Field(ge=1, le=1388)] = 1388
    step: Annotated[int, Field(ge=1)] = 1

    def values(self) -> tuple[int, ...]:
        return tuple(range(self.start, self.stop, self.step))


class SyntheticSource(_Model):
    """Generate realistic ATL06 granules locally (the embedded demo data)."""

    kind: Literal["synthetic"] = "synthetic"
    seed: int = 0
    cycle: Annotated[int, Field(ge=1, le=30)] = 22
    rgts: RgtRange | list[Annotated[int, Field(ge=1, le=1387)]] = RgtRange()
    regions: list[Literal[10, 11, 12]] = [10, 11, 12]
    bbox: tuple[float, float, float, float] | None = None
    weak_beam_dropout: Annotated[float, Field(ge=0, le=1)] = 0.1
    cloud_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    cache_dir: str | None = None

    def rgt_values(self) -> tuple[int, ...]:
        return self.rgts.values() if isinstance(self.rgts, RgtRange) else tuple(self.rgts)


class DirectorySource(_Model):
    """A local folder of granules with one UMM-G JSON record per granule."""

    kind: Literal["directory"] = "directory"
    path: str


class CmrSource(_Model):
    """Search NASA CMR once; granules read from S3 or HTTPS."""

    kind: Literal["cmr"] = "cmr"
    short_name: str = "ATL06"
    version: str = "006"
    provider: str | None = "NSIDC_CPRD"
    cycles: list[Annotated[int, Field(ge=1, le=99)]] = []
    temporal: tuple[str, str] | None = None
    host: str = "cmr.earthdata.nasa.gov"
    scheme: Literal["https", "http"] = "https"
    timeout: Annotated[float, Field(gt=0)] = 30.0
    retries: Annotated[int, Field(ge=0)] = 5
    access: Literal["direct", "external"] = "direct"


class CatalogSource(_Model):
    """A catalog written earlier by `polaragg catalog`; no network needed."""

    kind: Literal["catalog"] = "catalog"
    path: str


Source = Annotated[
    SyntheticSource | DirectorySource | CmrSource | CatalogSource, Field(discriminator="kind")
]


class Aoi(_Model):
    """Area of interest: exactly one of bbox, polygon, basins, outline or geojson."""

    bbox: tuple[float, float, float, float] | None = None
    polygon: list[tuple[float, float]] | None = None
    basins: list[str | int] | None = None
    outline: bool = False
    geojson: str | None = None
    crs: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "Aoi":
        given = [k for k in ("bbox", "polygon", "basins", "geojson") if getattr(self, k) is not None]
        if self.outline:
            given.append("outline")
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of bbox, polygon, basins, outline, geojson (got {given or 'none'})"
            )
        if self.bbox is not None:
            lon0, lat0, lon1, lat1 = self.bbox
            if not (-90 <= lat0 < lat1 <= 90):
                raise ValueError(f"bbox latitudes must satisfy -90 <= lat_min < lat_max <= 90, got {lat0}, {lat1}")
        return self


class GridConfig(_Model):
    parent_order: Annotated[int, Field(ge=0, le=29)] = 6
    child_order: Annotated[int, Field(ge=0, le=29)] = 12

    @model_validator(mode="after")
    def _ordered(self) -> "GridConfig":
        if self.child_order < self.parent_order:
            raise ValueError("child_order must be >= parent_order")
        if self.child_order - self.parent_order > 8:
            raise ValueError("child_order - parent_order must be <= 8 (at most 65536 children per task)")
        return self

    def grid(self) -> Grid:
        return Grid(self.parent_order, self.child_order)


class FilterConfig(_Model):
    quality_max: Annotated[int, Field(ge=0, le=127)] | None = 0

    def filters(self) -> Filters:
        return Filters(quality_max=self.quality_max)


class RetryConfig(_Model):
    """Retries of transient read failures (timeouts, throttling, resets): exponential backoff, full jitter."""

    attempts: Annotated[int, Field(ge=1, le=20)] = 4
    base_seconds: Annotated[float, Field(ge=0)] = 0.5
    cap_seconds: Annotated[float, Field(ge=0)] = 20.0

    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.attempts, self.base_seconds, self.cap_seconds)


ExecutorName = Literal[
    "single-threaded", "threads", "processes", "lithops-local", "lambda", "dask", "dask-distributed", "coiled"
]


class ExecutorConfig(_Model):
    # `lambda` is a Python keyword: the field is `aws_lambda`, the recipe key `lambda` (either is accepted).
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: ExecutorName = "threads"
    max_workers: Annotated[int, Field(ge=1)] | None = None
    memory_per_task: str = "2GB"
    aws_lambda: LambdaOptions = Field(default_factory=LambdaOptions, alias="lambda")
    coiled: CoiledOptions = CoiledOptions()


class OutputConfig(_Model):
    store: str = "polaragg-out/demo.zarr"
    overwrite: bool = True


class Recipe(_Model):
    name: Annotated[str, Field(min_length=1)]
    description: str = ""
    source: Source
    aoi: Aoi
    grid: GridConfig = GridConfig()
    filters: FilterConfig = FilterConfig()
    reader: Literal["h5py", "h5coro"] = "h5py"
    retry: RetryConfig = RetryConfig()
    executor: ExecutorConfig = ExecutorConfig()
    output: OutputConfig = OutputConfig()

    def fingerprint(self) -> str:
        """Hash of everything that determines the output values (not where or how it runs)."""
        core = self.model_dump(mode="json", include={"source", "aoi", "grid", "filters"})
        return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def load_recipe(source: str | Path | dict) -> Recipe:
    """Load and validate a recipe from a YAML file path, YAML text, or a dict."""
    base_dir: Path | None = None
    if isinstance(source, dict):
        data = source
    else:
        text = str(source)
        path = Path(text)
        if "\n" not in text and path.suffix in {".yaml", ".yml"}:
            if not path.exists():
                raise RecipeError(f"recipe file not found: {path}")
            base_dir = path.resolve().parent
            text = path.read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RecipeError(f"recipe is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RecipeError("recipe must be a YAML mapping with at least 'name', 'source' and 'aoi'")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_describe(exc)) from None
    return _resolve_paths(recipe, base_dir) if base_dir is not None else recipe


def _describe(exc: ValidationError) -> str:
    lines = ["invalid recipe:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not _is_union_tag(p))
        lines.append(f"  {loc or '(top level)'}: {err['msg']}")
    return "\n".join(lines)


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and part in {"synthetic", "directory", "cmr", "catalog", "function-after[_exactly_one(), Aoi]"}


def _resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    """Relative file paths in a recipe file are relative to the file."""
    def rel(p: str | None) -> str | None:
        if p is None or "://" in p or Path(p).expanduser().is_absolute():
            return p
        return str(base / p)

    source = recipe.source
    if isinstance(source, (DirectorySource, CatalogSource)):
        source = source.model_copy(update={"path": rel(source.path)})
    aoi = recipe.aoi.model_copy(update={"geojson": rel(recipe.aoi.geojson)})
    return recipe.model_copy(update={"source": source, "aoi": aoi})
