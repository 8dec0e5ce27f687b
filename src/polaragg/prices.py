"""The price table of the cost model: Lambda, EC2, Coiled and S3 prices and the model's constants.

`load_prices(override)` reads the shipped table (`polaragg/data/prices.yaml`) and merges user overrides
(a YAML file or a dict) over it; an unknown key is an error naming it, so a typo never prices silently at
the shipped value. The table also holds the model's assumptions (`assumptions:`: per-request S3 latency,
per-worker throughput, Lambda concurrency, vCPU speed, granules per granule-stage task), overridden the same
way. The same file holds the shipped calibrations, the Antarctic-cycle scale and the field's published runs,
which `shipped_section` hands to the modules that use them.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

ARCHITECTURES = ("arm64", "x86_64")
_DATA_SECTIONS_NOT_PRICES = frozenset({"schema", "calibrations", "antarctic_cycle", "published"})
_PRICE_SECTIONS = ("prices", "assumptions")  # sections whose keys are PriceTable fields
_VALUE_META = frozenset({"value", "unit", "source", "note"})
_INSTANCE_FIELDS = frozenset({"hourly", "vcpus", "memory_gib", "source", "note"})


class PriceError(ValueError):
    """A price table or override that cannot be used (unknown key, bad value)."""


@dataclass(frozen=True)
class Instance:
    """One EC2 instance type: its hourly price (USD, on-demand), vCPUs and memory."""

    name: str
    hourly: float
    vcpus: int
    memory_gib: float = 0.0
    source: str = ""


@dataclass(frozen=True)
class PriceTable:
    """All prices (USD) and model constants of the cost model; see `polaragg/data/prices.yaml`."""

    lambda_gb_second_arm64: float
    lambda_gb_second_x86_64: float
    lambda_requests_per_million: float
    lambda_mb_per_vcpu: float
    lambda_memory_mb_min: float
    lambda_memory_mb_max: float
    lambda_timeout_seconds: float
    s3_put_per_1000: float
    s3_get_per_1000: float
    spot_factor: float
    coiled_fee_per_cpu_hour: float
    # Assumptions of projections (the `assumptions:` section): not prices, not measured.
    s3_request_latency_seconds: float
    s3_worker_mb_per_second: float
    lambda_concurrency: float
    vcpu_speed: float
    granules_per_lambda_task: float
    instances: dict[str, Instance] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def lambda_gb_second(self, architecture: str) -> float:
        if architecture not in ARCHITECTURES:
            raise PriceError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
        return self.lambda_gb_second_arm64 if architecture == "arm64" else self.lambda_gb_second_x86_64

    def instance(self, name: str) -> Instance:
        try:
            return self.instances[name]
        except KeyError:
            raise PriceError(
                f"unknown instance type {name!r}; the price table knows {', '.join(sorted(self.instances))} "
                "(add one with load_prices({'instances': {name: {'hourly': ..., 'vcpus': ...}}}))"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in PRICE_KEYS}
        out["instances"] = {n: {"hourly": i.hourly, "vcpus": i.vcpus, "memory_gib": i.memory_gib}
                            for n, i in self.instances.items()}
        return out


PRICE_KEYS: tuple[str, ...] = tuple(
    f.name for f in fields(PriceTable) if f.name not in ("instances", "sources")
)


def _data_path() -> Path:
    return Path(str(resources.files("polaragg") / "data" / "prices.yaml"))


@lru_cache(maxsize=1)
def _shipped() -> dict[str, Any]:
    return yaml.safe_load(_data_path().read_text())


def shipped_section(name: str) -> Mapping[str, Any]:
    """A non-price section of the shipped `prices.yaml` (`calibrations`, `antarctic_cycle`, `published`);
    read-only."""
    return _shipped().get(name, {})


def _number(value: Any, where: str) -> float:
    if isinstance(value, Mapping):
        extra = set(value) - _VALUE_META
        if extra:
            raise PriceError(f"{where}: unknown field(s) {', '.join(sorted(map(str, extra)))} "
                             f"(expected value, unit, source)")
        if "value" not in value:
            raise PriceError(f"{where}: a mapping needs a 'value'")
        value = value["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PriceError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise PriceError(f"{where}: expected a finite number >= 0, got {value!r}")
    return float(value)


# Keys that were prices or model constants once, and what took their place.
RETIRED_KEYS: dict[str, str] = {
    "s3_gets_per_granule": "a run's S3 requests now come from the measured request model, "
                           "polaragg/data/onepass_measured.json (docs/cost.md)",
}


def _unknown(key: str, known: Iterable[str], where: str) -> PriceError:
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (retired: {RETIRED_KEYS[key]})" if key in RETIRED_KEYS else \
        f" (did you mean {close[0]!r}?)" if close else ""
    return PriceError(f"unknown price key {key!r} in {where}{hint}; "
                      f"known keys: {', '.join(known)}, instances")


def _merge(prices: dict[str, float], sources: dict[str, str], instances: dict[str, dict],
           data: Mapping[str, Any], where: str) -> None:
    """Merge one price document (flat keys, or the shipped `prices:` / `instances:` sections) in place."""
    if not isinstance(data, Mapping):
        raise PriceError(f"{where}: expected a mapping of price keys, got {type(data).__name__}")
    for key, value in data.items():
        if key in _PRICE_SECTIONS:
            if not isinstance(value, Mapping):
                raise PriceError(f"{where}: '{key}' must be a mapping")
            for k, v in value.items():
                if k not in PRICE_KEYS:
                    raise _unknown(str(k), PRICE_KEYS, f"{where} ({key})")
                prices[k] = _number(v, f"{where}: {key}.{k}")
                if isinstance(v, Mapping) and v.get("source"):
                    sources[k] = str(v["source"])
        elif key == "instances":
            if not isinstance(value, Mapping):
                raise PriceError(f"{where}: 'instances' must be a mapping of instance type -> hourly, vcpus")
            for name, spec in value.items():
                if not isinstance(spec, Mapping):
                    raise PriceError(f"{where}: instances.{name} must be a mapping with hourly and vcpus")
                extra = set(spec) - _INSTANCE_FIELDS
                if extra:
                    names = ", ".join(sorted(map(str, extra)))
                    raise PriceError(f"{where}: instances.{name}: unknown field(s) {names} "
                                     "(expected hourly, vcpus, memory_gib)")
                merged = {**instances.get(str(name), {}), **spec}
                for need in ("hourly", "vcpus"):
                    if need not in merged:
                        raise PriceError(f"{where}: instances.{name} needs {need!r}")
                instances[str(name)] = merged
        elif key in _DATA_SECTIONS_NOT_PRICES:
            continue
        elif key in PRICE_KEYS:
            prices[key] = _number(value, f"{where}: {key}")
        else:
            raise _unknown(str(key), PRICE_KEYS, where)


def load_prices(override: str | Path | Mapping[str, Any] | None = None) -> PriceTable:
    """The shipped price table with `override` (a YAML file path or a dict) merged over it.

    Overrides use the price keys of `prices.yaml` directly (`{"spot_factor": 0.3}`), or its sections
    (`{"prices": {...}, "assumptions": {...}, "instances": {"c7g.4xlarge": {"hourly": 0.6}}}`); a value may be a number or
    `{value: ..., unit: ..., source: ...}`. Unknown keys raise `PriceError` naming the key.
    """
    prices: dict[str, float] = {}
    sources: dict[str, str] = {}
    instances: dict[str, dict] = {}
    _merge(prices, sources, instances, _shipped(), str(_data_path()))
    if override is not None:
        if isinstance(override, (str, Path)):
            path = Path(override)
            if not path.is_file():
                raise PriceError(f"price override file not found: {path}")
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise PriceError(f"{path}: not valid YAML ({exc})") from exc
            _merge(prices, sources, instances, data, str(path))
        else:
            _merge(prices, sources, instances, override, "price override")
    missing = [k for k in PRICE_KEYS if k not in prices]
    if missing:  # only if the shipped file is damaged
        raise PriceError(f"price table lacks {', '.join(missing)}")
    if not 0 < prices["spot_factor"] <= 1:
        raise PriceError(f"spot_factor must lie in (0, 1], got {prices['spot_factor']}")
    if not 0 < prices["lambda_memory_mb_min"] < prices["lambda_memory_mb_max"]:
        raise PriceError("lambda_memory_mb_min must be > 0 and below lambda_memory_mb_max")
    for k in ("lambda_mb_per_vcpu", "lambda_timeout_seconds", "s3_worker_mb_per_second", "vcpu_speed"):
        if prices[k] <= 0:
            raise PriceError(f"{k} must be > 0")
    for k in ("lambda_concurrency", "granules_per_lambda_task"):
        if prices[k] < 1 or prices[k] != int(prices[k]):
            raise PriceError(f"{k} must be a whole number >= 1, got {prices[k]}")
    table: dict[str, Instance] = {}
    for name, spec in instances.items():
        hourly = _number(spec["hourly"], f"instances.{name}.hourly")
        vcpus = spec["vcpus"]
        if isinstance(vcpus, bool) or not isinstance(vcpus, int) or vcpus < 1:
            raise PriceError(f"instances.{name}.vcpus must be a positive integer, got {vcpus!r}")
        memory = _number(spec.get("memory_gib", 0.0), f"instances.{name}.memory_gib")
        table[name] = Instance(name, hourly, vcpus, memory, str(spec.get("source", "")))
    return PriceTable(**prices, instances=table, sources=sources)
