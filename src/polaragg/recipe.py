"""The recipe: one validated document naming source, area, grid, filters, output and executor.

`load_recipe(path_or_text)` reads YAML and returns a frozen `Recipe`; invalid input raises
`RecipeError` whose message names each offending field (e.g. `grid.child_order`).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from .domain import Filters, RetryPolicy

if TYPE_CHECKING:
    from .grid import Grid


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the fields at fault."""


MAX_RECIPE_BYTES = 1_000_000  # a recipe is configuration; anything larger is a mistake


_BYTE_SIZE = TypeAdapter(ByteSize)
# ByteSize reads a size from the start of the text and ignores what follows: a size must be all the text.
_WHOLE_BYTE_SIZE = re.compile(ByteSize.byte_string_pattern + r"\s*$", re.IGNORECASE)


def _memory_size(value: str | int) -> int:
    """A positive memory size in bytes: '2GB' (10**9 bytes), '1.5 GiB' (2**30), '512MiB' or a whole number.

    pydantic's `ByteSize` reads it; the message of a bad size is one line for the recipe error.
    """
    text = value if isinstance(value, int) and not isinstance(value, bool) else str(value)
    size = 0
    if isinstance(text, int) or _WHOLE_BYTE_SIZE.match(text):
        try:
            size = int(_BYTE_SIZE.validate_python(text))
        except ValidationError:
            pass
    if size <= 0:
        raise ValueError(f"cannot read {text!r} as a memory size (e.g. '2GB', '512MiB')")
    return size


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
    cycles: Annotated[list[Annotated[int, Field(ge=1, le=30)]], Field(min_length=1)] = [22]
    rgts: RgtRange | list[Annotated[int, Field(ge=1, le=1387)]] = RgtRange()
    # ATL06 regions: 10, 11, 12 over Antarctica; 3, 4, 5 over Greenland (one hemisphere per source)
    regions: list[Literal[3, 4, 5, 10, 11, 12]] = [10, 11, 12]
    bbox: tuple[float, float, float, float] | None = None
    weak_beam_dropout: Annotated[float, Field(ge=0, le=1)] = 0.1
    cloud_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    cache_dir: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_cycle(cls, data: object) -> object:
        """`cycle: 22` is short for `cycles: [22]`."""
        if isinstance(data, dict) and "cycle" in data:
            if "cycles" in data:
                raise ValueError("give either cycle or cycles, not both")
            data = {**data, "cycles": [data["cycle"]]}
            del data["cycle"]
        return data

    @field_validator("cycles")
    @classmethod
    def _cycles(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("cycles are listed more than once")
        return sorted(value)

    @field_validator("regions")
    @classmethod
    def _one_hemisphere(cls, value: list[int]) -> list[int]:
        north, south = sorted(r for r in set(value) if r < 8), sorted(r for r in set(value) if r >= 8)
        if north and south:
            raise ValueError(f"regions {sorted(set(value))} mix Greenland ({', '.join(map(str, north))}) and "
                             f"Antarctica ({', '.join(map(str, south))}): one hemisphere per source")
        return value

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
    basins: Annotated[list[str | int], Field(min_length=1)] | None = None
    # an ice sheet's outline: `antarctica` (or true) or `greenland`
    outline: bool | Literal["antarctica", "greenland"] = False
    geojson: str | None = None
    crs: str | None = None

    @field_validator("bbox")
    @classmethod
    def _bbox(cls, value: tuple[float, float, float, float] | None) -> tuple[float, float, float, float] | None:
        if value is None:
            return value
        lon0, lat0, lon1, lat1 = value
        if not (-90 <= lat0 < lat1 <= 90):
            raise ValueError(f"latitudes must satisfy -90 <= lat_min < lat_max <= 90 in [lon_min, lat_min, lon_max, "
                             f"lat_max], got {lat0}, {lat1}")
        if not (-180 <= lon0 <= 180 and -180 <= lon1 <= 180):
            raise ValueError(f"longitudes must lie in -180..180 in [lon_min, lat_min, lon_max, lat_max], "
                             f"got {lon0}, {lon1}")
        if lat0 <= 0 <= lat1:
            raise ValueError(f"latitudes {lat0} to {lat1} reach both hemispheres: an area of interest lies in one "
                             "hemisphere per run (run the north and the south separately)")
        return value

    @field_validator("polygon")
    @classmethod
    def _polygon(cls, value: list[tuple[float, float]] | None) -> list[tuple[float, float]] | None:
        if value is None:
            return value
        distinct = {(round(lon, 9), round(lat, 9)) for lon, lat in value}
        if len(distinct) < 3:
            raise ValueError(f"a polygon needs at least 3 distinct [lon, lat] points, got {len(distinct)}")
        for lon, lat in value:
            if not (-180.0 <= lon <= 360.0 and -90.0 <= lat <= 90.0):
                raise ValueError(f"point [{lon}, {lat}] is outside lon -180..360, lat -90..90")
        lats = [lat for _, lat in value]
        if min(lats) <= 0 <= max(lats):
            raise ValueError(f"points from latitude {min(lats)} to {max(lats)} reach both hemispheres: an area of "
                             "interest lies in one hemisphere per run")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> "Aoi":
        given = [k for k in ("bbox", "polygon", "basins", "geojson") if getattr(self, k) is not None]
        if self.outline:
            given.append("outline")
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of bbox, polygon, basins, outline, geojson (got {given or 'none'})"
            )
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
        from .grid import Grid  # the grid's code needs numpy and healpix_geo; the configuration does not

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


_REGION = r"^[a-z]{2}(-[a-z]+)+-\d+$"


class LambdaOptions(_Model):
    """How the Cubed tasks run on AWS Lambda (recipe key `executor.lambda`).

    arm64 is ~20 % cheaper per GB-second than x86_64; 1,769 MB is one vCPU; Earthdata S3 credentials
    work only from us-west-2, so the functions should run there.
    """

    architecture: Literal["arm64", "x86_64"] = "arm64"
    memory_mb: Annotated[int, Field(ge=128, le=10240)] = 2048
    timeout_s: Annotated[int, Field(ge=1, le=900)] = 900
    region: Annotated[str, Field(pattern=_REGION)] = "us-west-2"
    runtime: Annotated[str, Field(min_length=1)] = "polaragg-lambda:latest"
    max_workers: Annotated[int, Field(ge=1)] = 1000
    storage_bucket: str | None = None
    role_arn: Annotated[str, Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")] | None = None


# AWS Graviton (arm64) instance families: a "g" right after the generation digit (c7g, m6gd, c7gn,
# r8g, t4g, hpc7g, is4gen, im4gn, x2gd, g5g) and a1.
_AWS_ARM_FAMILY = re.compile(r"^(?:[a-z]+\d+g[a-z-]*|a1)$")


def _aws_vm_arch(vm_type: str) -> str | None:
    if "." not in vm_type:  # not an AWS instance type (e.g. GCP); let Coiled judge
        return None
    family = vm_type.split(".", 1)[0].lower()
    return "arm64" if _AWS_ARM_FAMILY.match(family) else "x86_64"


class CoiledOptions(_Model):
    """How the Dask (or Cubed) tasks run on Coiled (recipe key `executor.coiled`)."""

    mode: Literal["cluster", "functions"] = "cluster"
    n_workers: Annotated[int, Field(ge=1)] = 10
    worker_vm_types: Annotated[list[str], Field(min_length=1)] = ["c7g.xlarge"]
    scheduler_vm_types: Annotated[list[str], Field(min_length=1)] = ["c7g.large"]
    spot_policy: Literal["on-demand", "spot", "spot_with_fallback"] = "spot_with_fallback"
    arm: bool = True
    region: Annotated[str, Field(pattern=_REGION)] = "us-west-2"
    name: str | None = None
    idle_timeout: str = "20 minutes"
    software: str | None = None

    @model_validator(mode="after")
    def _architecture_matches(self) -> "CoiledOptions":
        want = "arm64" if self.arm else "x86_64"
        for field in ("worker_vm_types", "scheduler_vm_types"):
            wrong = [vm for vm in getattr(self, field) if _aws_vm_arch(vm) not in (None, want)]
            if wrong:
                raise ValueError(
                    f"{field} {wrong} are not {want} instance types but arm is {str(self.arm).lower()}"
                )
        return self


ExecutorName = Literal[
    "single-threaded", "threads", "processes", "lithops-local", "lambda", "dask", "dask-distributed", "coiled"
]


class ExecutorConfig(_Model):
    # `lambda` is a Python keyword: the field is `aws_lambda`, the recipe key `lambda` (either is accepted).
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: ExecutorName = "threads"
    max_workers: Annotated[int, Field(ge=1)] | None = None
    memory_per_task: str = "2GB"
    # Where Cubed keeps its intermediate arrays (a folder or an s3:// prefix every worker reaches); default:
    # next to the store (<store>.cubed; in memory for in-process executors on a local store). Removed when the
    # compute ends.
    work_dir: str | None = None
    aws_lambda: LambdaOptions = Field(default_factory=LambdaOptions, alias="lambda")
    coiled: CoiledOptions = CoiledOptions()
    # dask-distributed: the address of a running scheduler (tcp://host:8786); none: a LocalCluster here
    scheduler: Annotated[str, Field(pattern=r"^(tcp|tls|inproc|ws|wss)://\S+$")] | None = None
    # lithops-local: keep Lithops' job data in this S3 bucket (as on Lambda) instead of on this machine
    lithops_storage_bucket: str | None = None

    @field_validator("memory_per_task", mode="before")
    @classmethod
    def _memory(cls, value: object) -> str:
        _memory_size(value)
        return str(value)

    @property
    def memory_bytes(self) -> int:
        return _memory_size(self.memory_per_task)


NSIDC_S3_CREDENTIALS = "https://data.nsidc.earthdatacloud.nasa.gov/s3credentials"


class CredentialsConfig(_Model):
    """Where the S3 credentials of one set of buckets come from, and how tasks keep them current.

    - `client` (default): the client's AWS credential chain (environment, profile, SSO, role), resolved
      on the client and sent with every task, so workers need no AWS setup of their own;
    - `earthdata`: temporary credentials from a DAAC's `s3credentials` endpoint (`endpoint`, default
      NSIDC's), authorised by the Earthdata login token in the environment variable `token_env`;
    - `worker`: nothing is sent; each worker uses its own chain (e.g. a Lambda execution role);
    - `anonymous`: unsigned requests (public buckets).

    Credentials are refreshed `refresh_margin_s` before they expire; a task dispatched after a refresh
    gets the new ones. With `workers_refresh` (earthdata only) the login token travels with the tasks too,
    so a worker fetches fresh credentials itself when the ones it got are about to expire.
    """

    source: Literal["client", "earthdata", "worker", "anonymous"] = "client"
    endpoint: Annotated[str, Field(pattern=r"^https?://[^\s]+$")] | None = None
    token_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = "EARTHDATA_TOKEN"
    refresh_margin_s: Annotated[float, Field(ge=0)] = 600.0
    workers_refresh: bool = False

    @model_validator(mode="after")
    def _endpoint_for_earthdata(self) -> "CredentialsConfig":
        if self.source != "earthdata" and (self.endpoint is not None or self.workers_refresh):
            raise ValueError("endpoint and workers_refresh apply to source 'earthdata' only")
        return self

    @property
    def endpoint_url(self) -> str:
        return self.endpoint or NSIDC_S3_CREDENTIALS


class CredentialsSection(_Model):
    """Credentials for the granules' buckets and for the store's (with the partitions and work_dir)."""

    granules: CredentialsConfig = CredentialsConfig()
    store: CredentialsConfig = CredentialsConfig()


class CycleRange(_Model):
    """Cycles start..stop, both included."""

    start: Annotated[int, Field(ge=1, le=99)]
    stop: Annotated[int, Field(ge=1, le=99)]

    @model_validator(mode="after")
    def _ordered(self) -> "CycleRange":
        if self.stop < self.start:
            raise ValueError("stop must be >= start")
        return self


class TimeConfig(_Model):
    """Which times a run uses and how it bins them (recipe key `time`).

    `cycles` (a list or a start..stop range, read from granule names) and/or a date window [start, end)
    select; `bins` are `cycle` (default), `quarter`, `month` or a list of edges (instants). `reference`
    is t0 of the per-cell change fit (default: the start of the first bin); `fit` computes it (default: when there are two bins or more) and
    `min_bins` is the fewest bins with data a fitted cell needs. Naive times are UTC.
    """

    cycles: CycleRange | Annotated[list[Annotated[int, Field(ge=1, le=99)]], Field(min_length=1)] | None = None
    start: datetime | None = None
    end: datetime | None = None
    bins: Literal["cycle", "quarter", "month"] | Annotated[list[datetime], Field(min_length=2)] = "cycle"
    reference: datetime | None = None  # default: the start of the first bin (kept when bins are appended)
    fit: bool | None = None
    min_bins: Annotated[int, Field(ge=2)] = 3

    @model_validator(mode="after")
    def _consistent(self) -> "TimeConfig":
        if self.start and self.end and _naive_utc(self.end) <= _naive_utc(self.start):
            raise ValueError("end must be after start")
        if isinstance(self.bins, list):
            edges = [_naive_utc(e) for e in self.bins]
            if any(b <= a for a, b in zip(edges, edges[1:])):
                raise ValueError("bins edges must increase")
        return self

    def cycle_list(self) -> list[int] | None:
        if self.cycles is None:
            return None
        if isinstance(self.cycles, CycleRange):
            return list(range(self.cycles.start, self.cycles.stop + 1))
        return sorted(set(self.cycles))


def _naive_utc(when: datetime) -> datetime:
    from datetime import timezone

    return when.astimezone(timezone.utc).replace(tzinfo=None) if when.tzinfo else when


class OutputConfig(_Model):
    store: str = "polaragg-out/demo.zarr"
    overwrite: bool = False  # replace an existing polaragg store (never anything else)
    max_cells: Annotated[int, Field(ge=1)] = 200_000_000  # plans above this many child cells are refused
    # Pyramid: every order from grid.child_order up to this one, one group per order (None: the child order only).
    coarsest_order: Annotated[int, Field(ge=0, le=29)] | None = None


class Recipe(_Model):
    # A name is used in file names under the output folder: no separators, no leading dot.
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    description: str = ""
    source: Source
    aoi: Aoi
    grid: GridConfig = GridConfig()
    filters: FilterConfig = FilterConfig()
    reader: Literal["h5py", "h5coro"] = "h5py"
    retry: RetryConfig = RetryConfig()
    executor: ExecutorConfig = ExecutorConfig()
    output: OutputConfig = OutputConfig()
    time: TimeConfig = TimeConfig()
    credentials: CredentialsSection = CredentialsSection()

    @model_validator(mode="after")
    def _pyramid_within_grid(self) -> "Recipe":
        if self.output.coarsest_order is not None and self.output.coarsest_order > self.grid.child_order:
            raise ValueError(f"output.coarsest_order {self.output.coarsest_order} is finer than grid.child_order "
                             f"{self.grid.child_order}")
        return self

    def fingerprint(self) -> str:
        """Hash of everything that determines the output values (not where or how it runs)."""
        core = self.model_dump(mode="json", include={"source": True, "aoi": True, "grid": True, "filters": True,
                                                     "time": True, "output": {"coarsest_order"}})
        return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def load_recipe(source: str | Path | dict) -> Recipe:
    """Load and validate a recipe from a YAML file path, YAML text, or a dict."""
    base_dir: Path | None = None
    if isinstance(source, dict):
        data = source
    else:
        text = str(source)
        path = Path(text)
        if "\n" not in text and (isinstance(source, Path) or path.suffix or path.exists()):
            if path.suffix not in {".yaml", ".yml"}:
                raise RecipeError(f"recipe file {path} must be YAML, named *.yaml or *.yml")
            if not path.is_file():
                raise RecipeError(f"recipe file not found: {path}")
            if path.stat().st_size > MAX_RECIPE_BYTES:
                raise RecipeError(f"recipe file {path} is {path.stat().st_size:,} bytes; a recipe is at most "
                                  f"{MAX_RECIPE_BYTES:,} bytes")
            base_dir = path.resolve().parent
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise RecipeError(f"cannot read recipe file {path}: {exc}") from None
        if len(text) > MAX_RECIPE_BYTES:
            raise RecipeError(f"recipe text is {len(text):,} characters; a recipe is at most {MAX_RECIPE_BYTES:,}")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            raise RecipeError(f"recipe is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise RecipeError("recipe must be a YAML mapping with at least 'name', 'source' and 'aoi'")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_describe(exc)) from None
    return _resolve_paths(recipe, base_dir) if base_dir is not None else recipe


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not _is_union_tag(p))
        parts.append(f"{loc or '(top level)'}: {err['msg'].removeprefix('Value error, ')}")
    return "invalid recipe: " + "; ".join(parts)


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
