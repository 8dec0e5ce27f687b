"""Cost model: price table, cost from the ledger alone, calibration, estimates, the full-cycle projection
from the measured one-pass figures, and the CLI cost block.

Expected figures are closed forms computed here from the documented model (Lambda: billed milliseconds x GB
x price per GB-s + invocations x price per request; EC2: task-seconds / vCPUs x hourly; Coiled: EC2 +
vCPU-hours x fee; S3: GETs and PUTs x their prices) with prices and assumptions read from
`polaragg/data/prices.yaml` by yaml, and measured figures read from `polaragg/data/onepass_measured.json` and
`benchmarks/results/cost.json` by json, in this file, for synthetic ledger records and plans chosen here.
One reduced run of benchmarks/s3_requests.py against a local moto server, counted again here from moto's log.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import pytest
import yaml

from helpers import one_pass_requests

import polaragg
from polaragg.calibration import Calibration, calibrate, default_calibration, measured_figures
from polaragg.cost import (estimate, format_cost, project_full_cycle, published_reference, puts_per_task, run_cost,
                           store_cost)
from polaragg.ledger import TaskRecord, read_records, write_record
from polaragg.prices import PriceError, load_prices

ROOT = Path(__file__).resolve().parents[1]
PRICES_YAML = Path(polaragg.__file__).parent / "data" / "prices.yaml"
DOC = yaml.safe_load(PRICES_YAML.read_text())
# price or assumption key -> documented value
P = {k: float(v["value"]) for section in ("prices", "assumptions") for k, v in DOC[section].items()}
INSTANCES = DOC["instances"]
MEASURED = json.loads((Path(polaragg.__file__).parent / "data" / "onepass_measured.json").read_text())
RESULTS = json.loads((ROOT / "benchmarks" / "results" / "cost.json").read_text())
CYCLE = DOC["antarctic_cycle"]


def rec(i: int, seconds: float, *, rows: int = 100_000, granules: int = 10, obs: int | None = None,
        attempt: int = 1, executor: str = "lambda", peak: int = 300 * 2**20,
        status: str = "ok") -> TaskRecord:
    return TaskRecord(
        parent=1000 + i, child_lo=0, child_hi=4096, status=status,
        observations=int(rows * 0.9) if obs is None else obs, rows_in_cell=rows, granules=granules,
        granules_read=granules, seconds=seconds, peak_memory_bytes=peak, attempt=attempt, executor=executor,
    )


def varied_records(n: int = 25, executor: str = "lambda") -> list[TaskRecord]:
    """Records with uneven seconds (never on a millisecond boundary), granules and retries."""
    return [rec(i, 0.25 + 1.7 * i + 0.000_37, rows=20_000 * (i + 1), granules=1 + (i * 7) % 13,
                attempt=1 + (i % 5 == 2), executor=executor) for i in range(n)]


def lambda_closed_form(records: list[TaskRecord], memory_mb: int, gb_second: float,
                       cpu_scale: float = 1.0) -> tuple[float, float]:
    """(GB-seconds, USD) of the records on Lambda: each attempt billed ceil(seconds x scale in ms)."""
    billed_ms = 0
    for r in records:
        ms = r.seconds * cpu_scale * 1000.0
        assert 0.01 < ms - math.floor(ms) < 0.99, "choose seconds away from millisecond boundaries"
        billed_ms += r.attempt * math.ceil(ms)
    gb_s = billed_ms / 1000.0 * memory_mb / 1024.0
    invocations = sum(r.attempt for r in records)
    return gb_s, gb_s * gb_second + invocations * P["lambda_requests_per_million"] / 1e6


@pytest.fixture(scope="module")
def prices():
    return load_prices()


# --- prices -----------------------------------------------------------------------------------------


def test_shipped_prices_match_reference_sheet(prices):
    # The list prices of shared/reference/pricing.md, typed in here, not read from the table.
    assert prices.lambda_gb_second_arm64 == 0.0000133334
    assert prices.lambda_gb_second_x86_64 == 0.0000166667
    assert prices.lambda_requests_per_million == 0.20
    assert prices.lambda_mb_per_vcpu == 1769
    assert prices.s3_put_per_1000 == 0.005 and prices.s3_get_per_1000 == 0.0004
    assert prices.coiled_fee_per_cpu_hour == 0.05 and prices.spot_factor == 0.25
    c7g = prices.instance("c7g.4xlarge")
    assert (c7g.hourly, c7g.vcpus) == (0.58, 16)
    assert prices.instance("r8g.2xlarge").vcpus == 8
    # derived figures quoted in the reference: $0.083 / vCPU-h on arm64 Lambda, $0.036 on c7g
    assert prices.lambda_gb_second_arm64 * 1769 / 1024 * 3600 == pytest.approx(0.083, abs=0.001)
    assert c7g.hourly / c7g.vcpus == pytest.approx(0.036, abs=0.0005)


def test_loaded_table_is_the_yaml_file(prices):
    for key, value in P.items():
        assert getattr(prices, key) == value, key
    assert set(prices.instances) == set(INSTANCES)
    for name, spec in INSTANCES.items():
        assert (prices.instance(name).hourly, prices.instance(name).vcpus) == (spec["hourly"], spec["vcpus"])


def test_overrides_dict_and_file(tmp_path):
    p = load_prices({"spot_factor": 0.3, "instances": {"c7g.4xlarge": {"hourly": 0.6},
                                                       "m7g.xlarge": {"hourly": 0.16, "vcpus": 4}}})
    assert p.spot_factor == 0.3
    assert p.instance("c7g.4xlarge").hourly == 0.6 and p.instance("c7g.4xlarge").vcpus == 16
    assert p.instance("m7g.xlarge").vcpus == 4
    assert p.lambda_gb_second_arm64 == P["lambda_gb_second_arm64"]  # untouched keys keep the defaults
    f = tmp_path / "prices.yaml"
    f.write_text("prices:\n  lambda_gb_second_arm64: {value: 0.00002, source: my contract}\n"
                 "s3_get_per_1000: 0.001\n")
    p = load_prices(f)
    assert p.lambda_gb_second_arm64 == 0.00002 and p.s3_get_per_1000 == 0.001
    # an overridden price changes the bill by exactly its ratio
    records = varied_records(5)
    base = run_cost(records, load_prices(), executor="lambda")
    mine = run_cost(records, p, executor="lambda")
    ratio = 0.00002 / P["lambda_gb_second_arm64"]
    assert mine.lambda_duration_usd == pytest.approx(base.lambda_duration_usd * ratio)


@pytest.mark.parametrize("bad, match", [
    ({"lambda_gb_second_arm": 1.0}, "lambda_gb_second_arm"),
    ({"prices": {"coiled_fee": 0.1}}, "coiled_fee"),
    ({"instances": {"c7g.4xlarge": {"hourlyy": 1}}}, "hourlyy"),
    ({"instances": {"x1.big": {"hourly": 1.0}}}, "vcpus"),
    ({"spot_factor": 2.0}, "spot_factor"),
    ({"s3_get_per_1000": -1}, "s3_get_per_1000"),
    ({"s3_get_per_1000": "cheap"}, "s3_get_per_1000"),
    ({"s3_gets_per_granule": 30}, r"s3_gets_per_granule.*retired: a run's S3 requests now come from the measured"),
])
def test_bad_overrides_fail_naming_the_key(bad, match):
    with pytest.raises(PriceError, match=match):
        load_prices(bad)


def test_unknown_key_in_file_names_it_and_the_file(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("lambda_requests_per_millon: 0.1\n")
    expected = r"lambda_requests_per_millon.*p\.yaml.*did you mean 'lambda_requests_per_million'"
    with pytest.raises(PriceError, match=expected):
        load_prices(f)
    with pytest.raises(PriceError, match="not found"):
        load_prices(tmp_path / "missing.yaml")


def test_unknown_instance_and_architecture(prices):
    with pytest.raises(PriceError, match="m9.huge"):
        run_cost([rec(0, 1.0)], prices, instance="m9.huge")
    with pytest.raises(PriceError, match="architecture"):
        run_cost([rec(0, 1.0)], prices, architecture="riscv")
    with pytest.raises(PriceError, match="lambda_memory_mb"):
        run_cost([rec(0, 1.0)], prices, lambda_memory_mb=20_000)


# --- cost of a run: closed forms ------------------------------------------------------------------


@pytest.mark.parametrize("memory_mb", [1769, 2048, 3008, 10240])
@pytest.mark.parametrize("architecture", ["arm64", "x86_64"])
def test_lambda_closed_form(prices, memory_mb, architecture):
    records = varied_records()
    gb_s, usd = lambda_closed_form(records, memory_mb, P[f"lambda_gb_second_{architecture}"])
    r = run_cost(records, prices, executor="lambda", lambda_memory_mb=memory_mb, architecture=architecture)
    assert r.invocations == sum(x.attempt for x in records) == len(records) + 5
    assert r.lambda_gb_seconds == pytest.approx(gb_s, rel=1e-12)
    assert r.lambda_usd == pytest.approx(usd, rel=1e-12)
    assert r.lambda_request_usd == pytest.approx(r.invocations * P["lambda_requests_per_million"] / 1e6)
    assert r.task_seconds == pytest.approx(math.fsum(x.seconds for x in records))  # the ledger's own seconds
    assert r.observations == sum(x.observations for x in records)
    assert r.observations_per_core_second == pytest.approx(r.observations / r.task_seconds)
    assert r.peak_memory_bytes == 300 * 2**20


def test_lambda_bills_each_invocation_rounded_up_to_a_millisecond(prices):
    r = run_cost([rec(0, 0.0101), rec(1, 0.0005)], prices, executor="lambda", lambda_memory_mb=1024)
    assert r.lambda_gb_seconds == pytest.approx(0.011 + 0.001)


def test_arm_and_x86_differ_by_the_price_ratio_only(prices):
    records = varied_records()
    arm = run_cost(records, prices, executor="lambda", architecture="arm64")
    x86 = run_cost(records, prices, executor="lambda", architecture="x86_64")
    ratio = P["lambda_gb_second_x86_64"] / P["lambda_gb_second_arm64"]
    assert x86.lambda_duration_usd / arm.lambda_duration_usd == pytest.approx(ratio, rel=1e-12)
    assert x86.lambda_gb_seconds == arm.lambda_gb_seconds
    assert x86.lambda_request_usd == arm.lambda_request_usd
    assert (x86.coiled_usd, x86.s3_usd) == (arm.coiled_usd, arm.s3_usd)


def test_cost_is_linear_in_work(prices):
    records = varied_records(12)
    one = run_cost(records, prices, executor="lambda")
    three = run_cost([dataclasses.replace(r, parent=r.parent + 100 * k) for k in range(3) for r in records],
                     prices, executor="lambda")
    for key in ("lambda_gb_seconds", "lambda_usd", "ec2_usd", "coiled_usd", "task_seconds"):
        assert getattr(three, key) == pytest.approx(3 * getattr(one, key), rel=1e-12), key
    # requests: linear in the tasks, plus the client's requests once per run
    client = MEASURED["readers"]["h5coro"]["client"]
    once = (client["get_class_per_run"] * P["s3_get_per_1000"] + client["put_class_per_run"] * P["s3_put_per_1000"]) / 1000
    assert three.s3_usd - once == pytest.approx(3 * (one.s3_usd - once), rel=1e-3)  # counts are whole requests
    # whole-millisecond tasks: doubling every task's seconds doubles every bill but the requests
    whole = [rec(i, 1.5 + i, executor="lambda") for i in range(10)]
    slow = [rec(i, 2 * (1.5 + i), executor="lambda") for i in range(10)]
    a, b = run_cost(whole, prices), run_cost(slow, prices)
    assert b.lambda_duration_usd == pytest.approx(2 * a.lambda_duration_usd, rel=1e-12)
    assert b.lambda_request_usd == a.lambda_request_usd
    assert b.coiled_usd == pytest.approx(2 * a.coiled_usd, rel=1e-12)


def test_cost_grows_with_seconds_memory_and_retries(prices):
    records = varied_records(8)
    base = run_cost(records, prices, executor="lambda")
    slower = records[:3] + [dataclasses.replace(records[3], seconds=records[3].seconds + 0.5)] + records[4:]
    s = run_cost(slower, prices, executor="lambda")
    assert s.lambda_usd > base.lambda_usd and s.coiled_usd > base.coiled_usd and s.ec2_usd > base.ec2_usd
    assert s.s3_usd == base.s3_usd
    costs = [run_cost(records, prices, executor="lambda", lambda_memory_mb=m).lambda_usd
             for m in (512, 1024, 2048, 4096, 10240)]
    assert costs == sorted(costs) and len(set(costs)) == len(costs)
    retried = [dataclasses.replace(r, attempt=r.attempt + 1) for r in records]
    assert run_cost(retried, prices, executor="lambda").lambda_usd > base.lambda_usd


def test_retried_attempts_add_invocations(prices):
    r = run_cost([rec(0, 10.0, attempt=3), rec(1, 10.0)], prices, executor="lambda")
    assert r.invocations == 4
    assert r.lambda_gb_seconds == pytest.approx(4 * 10.0 * 2.0)
    assert r.task_seconds == pytest.approx(20.0)  # the ledger's own seconds
    assert any("retried" in n for n in r.notes)


def test_lambda_what_if_gives_a_fraction_of_a_vcpu_below_its_memory_threshold(prices):
    records = [rec(i, 2.0 + 0.3 * i + 0.0001, executor="processes") for i in range(6)]
    for memory_mb in (512, 1024):
        scale = P["lambda_mb_per_vcpu"] / memory_mb
        gb_s, usd = lambda_closed_form(records, memory_mb, P["lambda_gb_second_arm64"], cpu_scale=scale)
        r = run_cost(records, prices, lambda_memory_mb=memory_mb)
        assert r.lambda_cpu_scale == pytest.approx(scale)
        assert r.lambda_gb_seconds == pytest.approx(gb_s, rel=1e-12)
        assert r.lambda_usd == pytest.approx(usd, rel=1e-12)
    # on Lambda itself the seconds were measured there: no scaling
    gb_s, _ = lambda_closed_form(records, 1024, P["lambda_gb_second_arm64"])
    assert run_cost(records, prices, executor="lambda", lambda_memory_mb=1024).lambda_gb_seconds == \
        pytest.approx(gb_s, rel=1e-12)


@pytest.mark.parametrize("instance", sorted(INSTANCES))
def test_ec2_and_coiled_closed_form(prices, instance):
    records = varied_records(executor="coiled")
    hourly, vcpus = INSTANCES[instance]["hourly"], INSTANCES[instance]["vcpus"]
    hours = math.fsum(r.attempt * r.seconds for r in records) / vcpus / 3600.0
    r = run_cost(records, prices, instance=instance)
    assert r.executor == "coiled"  # read from the records
    assert r.instance_hours == pytest.approx(hours, rel=1e-12)
    assert r.ec2_usd == pytest.approx(hours * hourly, rel=1e-12)
    assert r.coiled_fee_usd == pytest.approx(hours * vcpus * P["coiled_fee_per_cpu_hour"], rel=1e-12)
    assert r.coiled_usd == pytest.approx(hours * (hourly + vcpus * P["coiled_fee_per_cpu_hour"]), rel=1e-12)
    assert r.total_usd == pytest.approx(r.coiled_usd + r.s3_usd)
    spot = run_cost(records, prices, instance=instance, spot=True)
    assert spot.ec2_usd == pytest.approx(hours * hourly * P["spot_factor"], rel=1e-12)
    assert spot.coiled_fee_usd == pytest.approx(r.coiled_fee_usd)
    walled = run_cost(records, prices, wall_seconds=1800.0, n_instances=4, instance=instance)
    assert walled.instance_hours == pytest.approx(2.0)
    assert walled.ec2_usd == pytest.approx(2 * hourly)
    assert walled.coiled_fee_usd == pytest.approx(2 * vcpus * P["coiled_fee_per_cpu_hour"])
    assert walled.wall_seconds == 1800.0


@pytest.mark.parametrize("reader", ["h5coro", "h5py"])
def test_s3_requests_closed_form(prices, reader):
    """S3 requests of a finished run: the request model with the reader's measured figures, on the ledger's
    counts (granules reported with their rows, segments and records per task), evaluated independently on
    the records as JSON (tests/helpers.one_pass_requests)."""
    records = varied_records()
    for i, r in enumerate(records):  # each task reports two granules of its own, and read some segments
        reports = [{"granule": f"g{i}-{k}", "rows": 40_000 + 977 * i + 13 * k, "seconds": 0.5, "cpu_seconds": 0.5,
                    "attempts": 1} for k in range(2)]
        records[i] = dataclasses.replace(r, granule_reports=reports, segments=max(0, r.granules_read - i % 3))
    as_json = [json.loads(json.dumps(vars(r))) for r in records]
    r = run_cost(records, prices, executor="lambda", puts_per_task=7, reader=reader)
    gets, puts = one_pass_requests(as_json, reader, 7)
    assert (r.s3_gets, r.s3_puts) == (round(gets), round(puts))
    expected = round(gets) * P["s3_get_per_1000"] / 1000 + round(puts) * P["s3_put_per_1000"] / 1000
    assert r.s3_usd == pytest.approx(expected, rel=1e-12)
    assert r.total_usd == pytest.approx(r.lambda_usd + expected, rel=1e-12)
    # rows and segments count: more of either is more GETs
    more = [dataclasses.replace(x, segments=x.segments + 5) for x in records]
    assert run_cost(more, prices, executor="lambda", puts_per_task=7, reader=reader).s3_gets > r.s3_gets
    # records without the granule stage (and without segments): every task's granules counted as read
    old = varied_records()
    gets, puts = one_pass_requests([json.loads(json.dumps(vars(x))) for x in old], reader, 7)
    o = run_cost(old, prices, executor="lambda", puts_per_task=7, reader=reader)
    assert (o.s3_gets, o.s3_puts) == (round(gets), round(puts))
    assert any("do not report the granule stage" in n for n in o.notes)


def test_local_executor_has_no_bill_but_what_ifs(prices):
    r = run_cost([rec(i, 2.0, executor="threads") for i in range(4)], prices, lambda_memory_mb=1024)
    assert r.total_usd is None
    text = r.format()
    assert "no cloud bill" in text and "| task-seconds" in text and "Lambda arm64 1024 MB" in text


def test_cost_is_recomputable_from_the_ledger_alone(tmp_path, prices):
    records = [rec(i, 0.1 + 0.37 * i + 1e-7 * i * i, rows=10_000 * (i + 1), granules=3 + i % 5,
                   attempt=1 + (i % 7 == 3), peak=(200 + i) * 2**20) for i in range(40)]
    store = str(tmp_path / "run.zarr")
    for r in reversed(records):  # written in another order than they are read back
        write_record(store, r)
    back = read_records(store)
    assert len(back) == len(records)
    kwargs = dict(executor="lambda", lambda_memory_mb=3008, wall_seconds=123.4)
    mine = run_cost(records, prices, **kwargs)
    again = run_cost(back, prices, **kwargs)
    assert again == mine
    assert again.to_dict() == mine.to_dict()
    assert store_cost(store, prices, **kwargs) == mine
    assert mine.format() == again.format()


def test_report_formats():
    r = run_cost([rec(i, 1.5) for i in range(3)], executor="lambda", wall_seconds=2.0)
    d = r.to_dict()
    for key in ("task_seconds", "lambda_usd", "coiled_usd", "s3_usd", "wall_seconds", "observations",
                "observations_per_core_second", "peak_memory_bytes", "total_usd"):
        assert key in d
    text = r.format()
    assert text.startswith("### Cost of the run (from 3 ledger records)")
    assert "| observations per core-second |" in text


# --- the CLI's cost block -----------------------------------------------------------------------------


def _dollars(line: str) -> tuple[float, float]:
    """The first $ amount of a line and half a unit of its last printed digit (the rounding it allows)."""
    m = re.search(r"\$([0-9][0-9,]*)(?:\.([0-9]+))?", line)
    assert m, f"no $ amount in {line!r}"
    decimals = m.group(2) or ""
    return float(m.group(1).replace(",", "") + "." + (decimals or "0")), 0.5 * 10.0 ** -len(decimals)


def _printed(line: str, usd: float) -> bool:
    value, half_ulp = _dollars(line)
    return abs(value - usd) <= half_ulp * (1 + 1e-9) and usd > 0


def _line(text: str, start: str) -> str:
    found = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(start)]
    assert len(found) == 1, f"expected one line starting {start!r} in:\n{text}"
    return found[0]


def test_format_cost_of_a_local_run_says_what_each_service_would_cost(prices):
    records = varied_records(executor="processes")
    report = run_cost(records, prices).to_dict()
    text = format_cost(report)
    _, lambda_usd = lambda_closed_form(records, 2048, P["lambda_gb_second_arm64"])
    c7g = INSTANCES["c7g.4xlarge"]
    hours = math.fsum(r.attempt * r.seconds for r in records) / c7g["vcpus"] / 3600.0
    ec2 = hours * c7g["hourly"]
    coiled = ec2 + hours * c7g["vcpus"] * P["coiled_fee_per_cpu_hour"]
    for start, usd in (("AWS Lambda (arm64, 2048 MB)", lambda_usd), ("EC2 c7g.4xlarge (on-demand)", ec2),
                       ("Coiled", coiled)):
        line = _line(text, start)
        assert "would cost $" in line, line
        assert _printed(line, usd), (line, usd)
    assert "priced on each service" in text and "not one bill" in text
    assert "none (local executor 'processes')" in _line(text, "Billed for this run:")
    assert not re.search(r"\b(lambda_usd|coiled_usd|ec2_usd|s3_usd|task_seconds)\b", text)  # no raw keys


def test_format_cost_of_a_lambda_run_names_its_bill(prices):
    records = varied_records(executor="lambda")
    report = run_cost(records, prices, architecture="x86_64", lambda_memory_mb=3008,
                      puts_per_task=16).to_dict()
    text = format_cost(report)
    _, lambda_usd = lambda_closed_form(records, 3008, P["lambda_gb_second_x86_64"])
    line = _line(text, "AWS Lambda (x86_64, 3008 MB)")
    assert line.split(":", 1)[1].split()[0] == "cost" and _printed(line, lambda_usd), (line, lambda_usd)
    assert "would cost $" in _line(text, "Coiled")
    # run_cost's reader defaults to a recipe's default reader, h5py
    gets, puts = one_pass_requests([json.loads(json.dumps(vars(r))) for r in records], "h5py", 16)
    s3 = round(gets) * P["s3_get_per_1000"] / 1000 + round(puts) * P["s3_put_per_1000"] / 1000
    billed = _line(text, "Billed for this run:")
    assert _printed(billed, lambda_usd + s3) and "lambda" in billed, (billed, lambda_usd + s3)
    assert format_cost({}).startswith("Cost: no cost report")


# --- calibration and estimates --------------------------------------------------------------------


def synthetic_records(n: int = 60, outlier: bool = False) -> list[TaskRecord]:
    out = []
    for i in range(n):
        rows = 5_000 + (i * 7919) % 900_000
        granules = 1 + (i * 31) % 80
        seconds = 2e-6 * rows + 0.05 * granules
        if outlier and i == 0:
            seconds += 5.0  # a cold first task
        out.append(rec(i, seconds, rows=rows, granules=granules, executor="processes"))
    return out


def test_calibration_recovers_known_coefficients():
    cal = calibrate(synthetic_records())
    assert cal.seconds_per_row == pytest.approx(2e-6, rel=0.01)
    assert cal.seconds_per_granule == pytest.approx(0.05, rel=0.01)
    assert abs(cal.seconds_per_task) < 1e-6
    assert cal.rejected == 0 and cal.r2 == pytest.approx(1.0)
    assert cal.observations_per_row == pytest.approx(0.9, rel=1e-3)


def test_calibration_is_non_negative_and_robust():
    cal = calibrate(synthetic_records(outlier=True))
    assert cal.rejected == 1
    assert cal.seconds_per_row == pytest.approx(2e-6, rel=0.01)
    assert cal.seconds_per_granule == pytest.approx(0.05, rel=0.01)
    # a negative true intercept is clipped at zero, never fitted negative
    records = [rec(i, 1e-6 * (1000 * (i + 1)) - 0.0005, rows=1000 * (i + 1), granules=i % 3)
               for i in range(10)]
    cal = calibrate(records, robust=False)
    assert cal.seconds_per_task == 0.0 and cal.seconds_per_row > 0 and cal.seconds_per_granule >= 0
    with pytest.raises(ValueError, match="no usable"):
        calibrate([rec(0, 1.0, status="failed")])


def test_default_calibration_is_shipped():
    cal = default_calibration()
    section = DOC["calibrations"]
    assert cal.name == section["default"]
    assert cal.seconds_per_row == float(section[cal.name]["seconds_per_row"])
    assert cal.seconds_per_granule == float(section[cal.name]["seconds_per_granule"])
    assert cal.machine
    assert default_calibration("field-lambda-s3").seconds_per_row > cal.seconds_per_row
    with pytest.raises(PriceError, match="nope"):
        default_calibration("nope")



# --- the measured one-pass figures ----------------------------------------------------------------


def test_measured_figures_are_the_benchmark_output_and_sane():
    """The shipped figures are benchmarks/results/cost.json's, measured at a commit of this repository, and
    every measured point is physically sane."""
    assert MEASURED["readers"] == RESULTS["readers"] and MEASURED["commit"] == RESULTS["commit"]
    assert re.fullmatch(r"[0-9a-f]{40}", MEASURED["commit"])
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-t", MEASURED["commit"]], capture_output=True,
                           text=True)
    if known.returncode == 0 or "not a git repository" not in known.stderr:
        assert known.stdout.strip() == "commit", known.stderr
    assert set(MEASURED["readers"]) == {"h5coro", "h5py"}
    assert 0 < MEASURED["cold_start_cpu_seconds"] < 30
    for run in RESULTS["runs"]:
        assert not run.get("error"), run
        assert run["moto_log_matches"] and run["requests"] == run["moto_log_requests"] > 0
        g, c, k = run["granule_stage"], run["cell_stage"], run["client"]
        assert g["requests"] + c["requests"] + k["requests"] == run["requests"]  # the stages partition the log
        assert c["task_record_puts"] == run["tasks"]  # one record per cell task
        assert c["segment_gets"] == run["segments"] >= run["tasks"] // 2
        assert c["chunk_puts"] + c["task_record_puts"] == run["tasks"] * run["puts_per_task_schema"]
    whole = [p for key, pts in RESULTS["points"].items() if key.startswith("full/") for p in pts["granules"]]
    assert whole and min(p["rows"] for p in whole) > 250_000  # real-sized granules were measured
    for pts in RESULTS["points"].values():
        for p in pts["granules"]:
            assert p["gets"] >= 1 and p["rows"] > 0 and p["cpu_seconds"] > 0
            assert 0 < p["get_bytes"] <= p["file_bytes"]  # never more than the object
        for t in pts["tasks"]:
            assert t["cpu_seconds"] > 0 and t["segments"] <= t["observations"]
    mean_rows = CYCLE["rows"] / CYCLE["granules"]
    for reader, f in MEASURED["readers"].items():
        g, c = f["granule_stage"], f["cell_stage"]
        gets = g["granule_gets"]["per_granule"] + g["granule_gets"]["per_row"] * mean_rows
        fetched = g["granule_get_bytes"]["per_granule"] + g["granule_get_bytes"]["per_row"] * mean_rows
        assert gets >= 1, reader
        assert 0 < fetched <= 1.01 * f["file_bytes_per_row"] * mean_rows, reader  # bytes < the granule's size
        assert g["cpu_seconds"]["per_row"] > 0 and g["request_concurrency"] >= 0.99
        assert 0 < c["segments_per_planned_pair"] <= 1 and c["segment_gets_per_segment"] == 1
        # 20 bytes a partition row: t float64, h float32, sigma float32, cell uint16, bin uint16
        assert c["segment_bytes_per_observation"] == pytest.approx(8 + 4 + 4 + 2 + 2)
    # the package reads the same numbers
    fig = measured_figures("h5coro")
    g = MEASURED["readers"]["h5coro"]["granule_stage"]
    assert fig.granule.cpu_seconds(1000.0) == pytest.approx(
        g["cpu_seconds"]["per_granule"] + 1000.0 * g["cpu_seconds"]["per_row"])
    with pytest.raises(PriceError, match="reader 'h5zz'"):
        measured_figures("h5zz")


def _nnls_optimal(a: np.ndarray, y: np.ndarray, x: np.ndarray) -> bool:
    """Karush-Kuhn-Tucker conditions of min |a x - y|^2 subject to x >= 0."""
    grad = a.T @ (a @ x - y)
    tol = 1e-6 * float(np.abs(a.T @ y).max())
    return bool(np.all(x >= 0) and np.all(np.abs(grad[x > 0]) <= tol) and np.all(grad[x == 0] >= -tol))


def test_measured_fits_are_least_squares_of_the_measured_points():
    for reader, f in RESULTS["readers"].items():
        pts = [v for key, v in RESULTS["points"].items() if key.endswith(f"/{reader}")]
        gp = [p for v in pts for p in v["granules"]]
        tp = [t for v in pts for t in v["tasks"]]
        rows = np.array([p["rows"] for p in gp], dtype=float)
        a = np.c_[np.ones_like(rows), rows]
        for name, key in (("cpu_seconds", "cpu_seconds"), ("granule_gets", "gets"), ("granule_get_bytes", "get_bytes")):
            fit = f["granule_stage"][name]
            x = np.array([fit["per_granule"], fit["per_row"]])
            assert _nnls_optimal(a, np.array([p[key] for p in gp], dtype=float), x), (reader, name)
        cell = f["cell_stage"]["cpu_seconds"]
        a = np.c_[np.ones(len(tp)), [t["observations"] for t in tp], [t["segments"] for t in tp]]
        x = np.array([cell["per_task"], cell["per_observation"], cell["per_segment"]])
        assert _nnls_optimal(a, np.array([t["cpu_seconds"] for t in tp]), x), reader
        assert f["granules"] == len(gp) and f["tasks"] == len(tp)


# --- estimates and the full-cycle projection from the measured figures -----------------------------


def _ceil_ms(seconds: float) -> int:
    return math.ceil(round(seconds * 1000.0, 6))


def one_pass_closed_form(figures: dict, granule_tasks: list[tuple[int, float, float]],
                         cell_tasks: list[tuple[int, float, float, float]], puts: float, *, memory_mb: int = 2048,
                         architecture: str = "arm64", workers: int = 1000, prices: dict = P,
                         cold_start: float = MEASURED["cold_start_cpu_seconds"], cell_cpu=None) -> dict:
    """The documented model written out: granule tasks (count, granules, rows each), cell tasks (count,
    observations, segments, reported granules each); seconds = CPU x scale / speed + (GETs + PUTs) x latency /
    concurrency + bytes / throughput; one INIT per concurrent function; c7g.4xlarge for EC2 / Coiled."""
    g, c, k = figures["granule_stage"], figures["cell_stage"], figures["client"]
    lat, mbps, speed = prices["s3_request_latency_seconds"], prices["s3_worker_mb_per_second"], prices["vcpu_speed"]
    scale = max(1.0, prices["lambda_mb_per_vcpu"] / memory_mb)
    out = {"gets": 0.0, "puts": 0.0, "bytes": 0.0, "billed_ms": 0, "full": 0.0, "wall": 0.0, "tasks": 0, "cpu": 0.0}
    stages = []
    for count, a, b, *rest in granule_tasks:
        n, rows = a, b
        cpu = n * g["cpu_seconds"]["per_granule"] + rows * g["cpu_seconds"]["per_row"]
        gets = n * (g["granule_gets"]["per_granule"] + g["granule_heads_per_granule"]
                    + g["other_get_class_per_granule"]) + rows * g["granule_gets"]["per_row"]
        put = n * g["put_class_per_granule"]
        got = n * g["granule_get_bytes"]["per_granule"] + rows * g["granule_get_bytes"]["per_row"]
        stages.append(("g", count, cpu, gets, put, got, g["request_concurrency"]))
    for count, obs, seg, reported in cell_tasks:
        cp = c["cpu_seconds"]
        cpu = cp["per_task"] + cp["per_observation"] * obs + cp["per_segment"] * seg if cell_cpu is None \
            else cell_cpu(obs, seg)
        gets = seg * c["segment_gets_per_segment"] + reported * c["record_get_class_per_granule"] \
            + c["other_get_class_per_task"]
        put = puts + c["other_put_class_per_task"]
        got = obs * c["segment_bytes_per_observation"]
        stages.append(("c", count, cpu, gets, put, got, c["request_concurrency"]))
    walls = {"g": [0.0, 0.0, 0], "c": [0.0, 0.0, 0]}  # slowest, total, tasks
    for stage, count, cpu, gets, put, got, conc in stages:
        io = (gets + put) * lat / conc + got / (mbps * 1e6)
        on_lambda, full = cpu * scale / speed + io, cpu / speed + io
        out["billed_ms"] += count * _ceil_ms(on_lambda)
        out["full"] += count * full
        out["cpu"] += count * cpu
        out["gets"] += count * gets
        out["puts"] += count * put
        out["bytes"] += count * got
        out["tasks"] += count
        w = walls[stage]
        w[0], w[1], w[2] = max(w[0], on_lambda), w[1] + count * on_lambda, w[2] + count
    n_cells = walls["c"][2]
    out["gets"] += k["get_class_per_run"] + k["get_class_per_task"] * n_cells
    out["puts"] += k["put_class_per_run"] + k["put_class_per_task"] * n_cells
    init = cold_start * scale / speed
    cold = min(out["tasks"], max(min(workers, walls["g"][2]), min(workers, walls["c"][2])))
    out["cold"] = cold
    out["gb_s"] = (out["billed_ms"] + cold * _ceil_ms(init)) / 1000.0 * memory_mb / 1024.0
    out["lambda_usd"] = out["gb_s"] * prices[f"lambda_gb_second_{architecture}"] \
        + out["tasks"] * prices["lambda_requests_per_million"] / 1e6
    out["wall"] = init + sum(max(w[0], w[1] / min(workers, w[2])) for w in walls.values() if w[2])
    c7g = INSTANCES["c7g.4xlarge"]
    out["hours"] = out["full"] / c7g["vcpus"] / 3600.0
    out["coiled_usd"] = out["hours"] * (c7g["hourly"] + c7g["vcpus"] * prices["coiled_fee_per_cpu_hour"])
    out["s3_usd"] = out["gets"] * prices["s3_get_per_1000"] / 1000 + out["puts"] * prices["s3_put_per_1000"] / 1000
    return out


def cycle_tasks(figures: dict) -> tuple[list, list, float]:
    """The full cycle of prices.yaml written out: the largest granule and the rest alike; the densest cell
    and the rest alike; segments = listed granules x the measured share with rows."""
    n_g, rows, largest = int(CYCLE["granules"]), float(CYCLE["rows"]), float(CYCLE["largest_granule_rows"])
    granules = [(1, 1, largest), (n_g - 1, 1, (rows - largest) / (n_g - 1))]
    n_t, obs = int(CYCLE["parent_cells_with_data"]), float(CYCLE["observations"])
    dense_obs, dense_g = float(CYCLE["densest_cell_observations"]), float(CYCLE["densest_cell_granules"])
    rest_g = (n_g * float(CYCLE["pairs_per_granule"]) - dense_g) / (n_t - 1)
    share = figures["cell_stage"]["segments_per_planned_pair"]
    cells = [(1, dense_obs, dense_g * share, n_g / n_t), (n_t - 1, (obs - dense_obs) / (n_t - 1), rest_g * share, n_g / n_t)]
    # one PUT per stored statistic's chunk and one ledger record: as many as the benchmark counted
    puts = figures["cell_stage"]["chunk_puts_per_task"] + figures["cell_stage"]["task_record_puts_per_task"]
    return granules, cells, puts


@pytest.mark.parametrize("reader", ["h5coro", "h5py"])
@pytest.mark.parametrize("memory_mb, architecture", [(2048, "arm64"), (1024, "x86_64"), (3008, "arm64")])
def test_full_cycle_projection_closed_form(prices, reader, memory_mb, architecture):
    figures = MEASURED["readers"][reader]
    granules, cells, puts = cycle_tasks(figures)
    want = one_pass_closed_form(figures, granules, cells, puts, memory_mb=memory_mb, architecture=architecture)
    r = project_full_cycle(prices=prices, reader=reader, lambda_memory_mb=memory_mb, architecture=architecture)
    assert r.kind == "projection" and r.n_tasks == r.invocations == want["tasks"] == CYCLE["granules"] + CYCLE[
        "parent_cells_with_data"]
    assert r.observations == pytest.approx(CYCLE["observations"], rel=1e-9)
    assert r.rows == pytest.approx(CYCLE["rows"], rel=1e-9)
    assert r.lambda_gb_seconds == pytest.approx(want["gb_s"], rel=1e-9)
    assert r.lambda_usd == pytest.approx(want["lambda_usd"], rel=1e-9)
    assert r.lambda_cold_starts == want["cold"] == 1000
    assert r.wall_seconds == r.lambda_wall_seconds == pytest.approx(want["wall"], rel=1e-9)
    assert r.task_seconds == pytest.approx(want["full"], rel=1e-9)
    assert r.instance_hours == pytest.approx(want["hours"], rel=1e-9)
    assert r.coiled_usd == pytest.approx(want["coiled_usd"], rel=1e-9)
    assert (r.s3_gets, r.s3_puts) == (round(want["gets"]), round(want["puts"]))
    assert r.s3_usd == pytest.approx(want["s3_usd"], rel=1e-9)
    assert r.s3_get_bytes == round(want["bytes"])
    assert sum(st["cpu_seconds"] for st in r.stages) == pytest.approx(want["cpu"], rel=1e-9)


def test_projection_puts_come_from_the_schema_and_match_the_measured_count():
    """A one-cycle plan's schema (15 statistics at the child order, one time chunk) gives as many PUTs per
    cell task as the benchmark counted in the request log."""
    from polaragg.schema import OutputSchema

    plan = SimpleNamespace(schema=OutputSchema(1, False), time=SimpleNamespace(n=1), stored_bins=0, time_chunk=0,
                           task_orders=(12,))
    measured = {f["cell_stage"]["chunk_puts_per_task"] + f["cell_stage"]["task_record_puts_per_task"]
                for f in MEASURED["readers"].values()}
    assert measured == {puts_per_task(plan)} == {15 + 1}
    pyramid = dataclasses.replace(OutputSchema(4, True))  # 4 bins with the fit, three orders, bins in 2 chunks
    plan = SimpleNamespace(schema=pyramid, time=SimpleNamespace(n=4), stored_bins=0, time_chunk=2,
                           task_orders=(12, 11, 10))
    assert puts_per_task(plan) == 3 * (len(pyramid.per_bin) * 2 + len(pyramid.per_cell)) + 1
    more = project_full_cycle(puts=40)
    base = project_full_cycle()
    n_t = CYCLE["parent_cells_with_data"]
    assert more.s3_puts - base.s3_puts == n_t * (40 - 16)


def test_assumptions_are_printed_and_change_the_projection():
    figures = MEASURED["readers"]["h5coro"]
    r = project_full_cycle()
    text = r.format()
    names = [name for name, _ in r.assumptions]
    for name in ("S3 request latency", "request concurrency", "S3 throughput", "Lambda", "concurrency",
                 "vCPU speed", "cold starts", "measured figures", "scale"):
        assert name in names
        assert f"- {name}: " in text
    assert f"S3 request latency: {P['s3_request_latency_seconds'] * 1000:g} ms per request" in text
    g_conc, c_conc = figures["granule_stage"]["request_concurrency"], figures["cell_stage"]["request_concurrency"]
    assert f"granule stage {g_conc:.2f}, cell stage {c_conc:.2f} requests in flight" in text
    assert "Lambda: 2048 MB arm64: 1.00 vCPU, CPU-seconds x 1.00" in text
    assert "at most 1,000 functions at once" in text
    assert MEASURED["commit"][:7] in text
    assert "| granule stage | 4,100 |" in text and "| cell stage | 1,330 |" in text
    # a fraction of a vCPU below 1,769 MB scales the CPU part only
    small = project_full_cycle(lambda_memory_mb=1024)
    assert f"CPU-seconds x {1769 / 1024:.2f}" in small.format()
    for a, b in zip(small.stages, r.stages):
        assert a["wait_seconds"] == b["wait_seconds"] and a["cpu_seconds"] == b["cpu_seconds"]
    # waits are linear in the assumed latency, nothing else moves
    slow = project_full_cycle(prices=load_prices({"s3_request_latency_seconds": 0.05}))
    assert "S3 request latency: 50 ms per request" in slow.format()
    for a, b in zip(slow.stages, r.stages):
        assert a["wait_seconds"] == pytest.approx(b["wait_seconds"] * 0.05 / P["s3_request_latency_seconds"])
        assert (a["cpu_seconds"], a["gets"], a["puts"]) == (b["cpu_seconds"], b["gets"], b["puts"])
    assert slow.s3_usd == r.s3_usd and slow.lambda_usd > r.lambda_usd
    hundred = project_full_cycle(concurrency=100)
    assert "at most 100 functions at once (given)" in hundred.format() and hundred.lambda_cold_starts == 100
    assert hundred.wall_seconds > r.wall_seconds


def test_published_run_is_a_labelled_reference_row_not_the_projection(prices, monkeypatch):
    rows = published_reference(prices)
    assert rows and all(row.label.startswith("published: ") for row in rows)
    field = rows[0]
    # shared/reference/pricing.md: 87,152 Lambda-seconds at 2 GB arm64 -> $2.32
    assert field.lambda_gb_seconds == pytest.approx(87_152 * 2.0)
    assert field.usd_price_table == pytest.approx(2.32, abs=0.005) and field.usd_published == 2.32
    r = project_full_cycle(prices=prices)
    text = r.format()
    reference = text.split("Reference (the field's published runs, for comparison; not part of this projection):")
    assert len(reference) == 2 and "published: " not in reference[0]
    assert all(f"- {row.label}: " in reference[1] for row in rows)
    assert abs(r.lambda_usd - field.usd_price_table) > 0.01  # a projection of its own
    # the projection does not read the published figures
    import polaragg.cost as cost

    doubled = [{**item, "lambda_seconds": 2 * item["lambda_seconds"]} for item in DOC["published"]]
    real = cost.shipped_section
    monkeypatch.setattr(cost, "shipped_section", lambda name: doubled if name == "published" else real(name))
    again = project_full_cycle(prices=prices)
    assert again.reference[0]["lambda_gb_seconds"] == pytest.approx(2 * field.lambda_gb_seconds)
    for key in ("lambda_usd", "lambda_gb_seconds", "coiled_usd", "ec2_usd", "s3_usd", "task_seconds", "wall_seconds"):
        assert getattr(again, key) == getattr(r, key), key


def test_full_cycle_with_a_calibration_replaces_the_measured_cpu(prices):
    """A calibration's task seconds (granule stage included) replace both stages' measured CPU-seconds;
    requests, bytes and waits stay the measured ones."""
    figures = MEASURED["readers"]["h5coro"]
    cal = Calibration(seconds_per_row=2e-6, seconds_per_granule=0.01, seconds_per_task=0.5, name="mine")
    granules, cells, puts = cycle_tasks(figures)
    per_row = CYCLE["observations"] / CYCLE["rows"]
    share = figures["cell_stage"]["segments_per_planned_pair"]
    zero_granules = {**figures, "granule_stage": {**figures["granule_stage"],
                                                  "cpu_seconds": {"per_granule": 0.0, "per_row": 0.0}}}
    want = one_pass_closed_form(zero_granules, granules, cells, puts,
                                cell_cpu=lambda obs, seg: 2e-6 * obs / per_row + 0.01 * seg / share + 0.5)
    r = project_full_cycle(cal, prices)
    assert r.task_seconds == pytest.approx(want["full"], rel=1e-9)
    assert r.lambda_gb_seconds == pytest.approx(want["gb_s"], rel=1e-9)
    assert r.stages[0]["cpu_seconds"] == 0.0
    assert any("calibration 'mine'" in n for n in r.notes)
    base = project_full_cycle(prices=prices)
    assert (r.s3_gets, r.s3_puts, r.s3_usd) == (base.s3_gets, base.s3_puts, base.s3_usd)


def fake_plan(granules_per_task: int = 2):
    """What estimate reads of a Plan: tasks (expected rows, listed granules, reported granules), the
    granule-stage order and grouping, and the reader."""
    ref = [SimpleNamespace(granule_id=f"G{i}", url=f"s3://b/G{i}.h5") for i in range(5)]
    t = [SimpleNamespace(expected_rows=400_000.0, granules=tuple(ref[:4]), reports=(("G0", ()), ("G1", ()))),
         SimpleNamespace(expected_rows=100_000.0, granules=tuple(ref[2:]), reports=(("G2", ()), ("G3", ()), ("G4", ()))),
         SimpleNamespace(expected_rows=0.0, granules=(), reports=())]
    return SimpleNamespace(tasks=t, granules=tuple(ref), granules_per_task=granules_per_task, reader="h5py")


def test_estimate_of_a_plan_closed_form(prices):
    plan = fake_plan()
    figures = MEASURED["readers"]["h5py"]
    share = figures["cell_stage"]["segments_per_planned_pair"]
    catalog = SimpleNamespace(granules=__import__("pandas").DataFrame(
        {"granule_id": [f"G{i}" for i in range(5)], "expected_rows": [300_000.0, 200_000, 100_000, 50_000, 10_000]}))
    per_row = 0.9
    # granule-stage tasks of 2 granules in plan order: (G0, G1), (G2, G3), (G4)
    granules = [(1, 2, 500_000.0), (1, 2, 150_000.0), (1, 1, 10_000.0)]
    cells = [(1, 360_000, 4 * share, 2), (1, 90_000, 3 * share, 3), (1, 0.0, 0.0, 0)]  # rows x 0.9 observations
    want = one_pass_closed_form(figures, granules, cells, 16.0, workers=1000)
    r = estimate(plan, prices=prices, catalog=catalog, observations_per_row=per_row, puts=16, executor="lambda")
    assert r.kind == "estimate" and r.n_tasks == 6 and r.granules_read == 5
    assert r.task_seconds == pytest.approx(want["full"], rel=1e-9)
    assert r.lambda_gb_seconds == pytest.approx(want["gb_s"], rel=1e-9)
    assert r.lambda_usd == pytest.approx(want["lambda_usd"], rel=1e-9)
    assert r.lambda_cold_starts == 3  # as many functions as the larger stage's tasks
    assert r.coiled_usd == pytest.approx(want["coiled_usd"], rel=1e-9)
    assert (r.s3_gets, r.s3_puts) == (round(want["gets"]), round(want["puts"]))
    assert r.total_usd == pytest.approx(r.lambda_usd + r.s3_usd)
    assert "- scale: this plan: 5 granules in 3 granule-stage task(s) of up to 2" in r.format()
    # without a catalog the plan's expected rows are spread over its granules
    bare = estimate(plan, prices=prices, observations_per_row=per_row, puts=16)
    assert bare.rows == pytest.approx(500_000) and any("no catalog" in v for _, v in bare.assumptions)
    # the plan's reader picks the figures; an explicit reader others
    assert "reader h5py" in dict(bare.assumptions)["measured figures"]
    assert "reader h5coro" in dict(estimate(plan, prices=prices, puts=16, reader="h5coro").assumptions)[
        "measured figures"]


def test_a_one_pass_calibration_counts_the_granules_a_task_reports_not_those_it_lists(prices):
    """`calibrate` on one-pass records fits seconds per granule reported (each granule read once); applied to
    a plan, that term multiplies each task's reported granules (2, 3, 0 in fake_plan), while a calibration
    of the re-reading pipeline multiplies the granules it lists (4, 3, 0)."""
    records = [dataclasses.replace(rec(i, 0.2 + 0.03 * k + 4e-7 * rows, rows=rows), granules=6 + k,
                                   granule_reports=[{"granule": f"g{i}-{j}", "seconds": 0.0} for j in range(k)])
               for i, (rows, k) in enumerate([(100_000, 1), (250_000, 4), (400_000, 2), (50_000, 3), (900_000, 5)])]
    fitted = calibrate(records, robust=False)
    assert fitted.granules == "reported"
    assert (fitted.seconds_per_row, fitted.seconds_per_granule, fitted.seconds_per_task) == pytest.approx(
        (4e-7, 0.03, 0.2), rel=1e-6)
    assert calibrate([dataclasses.replace(r, granule_reports=[]) for r in records]).granules == "listed"
    plan = fake_plan()
    reported = estimate(plan, prices=prices, puts=16, calibration=fitted)
    listed = estimate(plan, prices=prices, puts=16, calibration=dataclasses.replace(fitted, granules="listed"))
    cpu = [st for st in reported.stages if st["stage"] == "cell stage"][0]["cpu_seconds"]
    expected = sum(0.2 + 0.03 * k + 4e-7 * t.expected_rows for t, k in zip(plan.tasks, (2, 3, 0)))
    assert cpu == pytest.approx(expected, rel=1e-9)
    assert listed.task_seconds - reported.task_seconds == pytest.approx(0.03 * (7 - 5) / P["vcpu_speed"], rel=1e-9)


def test_estimate_scales_and_wall_bounds(prices):
    one = estimate(fake_plan(1), prices=prices, puts=16)
    assert one.n_tasks == 5 + 3
    slots = estimate(fake_plan(1), prices=prices, puts=16, n_instances=1)
    # one instance: each stage's task-seconds packed on its 16 vCPUs, but no shorter than its slowest task
    # (at 2048 MB a Lambda has a full vCPU, so a task's Lambda seconds are its full-vCPU seconds)
    vcpus = INSTANCES["c7g.4xlarge"]["vcpus"]
    assert slots.wall_seconds == pytest.approx(sum(max(st["max_task_seconds"], st["seconds"] / vcpus)
                                                   for st in slots.stages), rel=1e-12)
    assert slots.instance_hours == pytest.approx(slots.wall_seconds / 3600.0)
    assert one.wall_seconds == pytest.approx(one.lambda_wall_seconds)
    assert slots.ec2_usd == pytest.approx(slots.instance_hours * INSTANCES["c7g.4xlarge"]["hourly"])
    with pytest.raises(ValueError, match="concurrency"):
        estimate(fake_plan(), prices=prices, puts=16, concurrency=0)
    with pytest.raises(PriceError, match="lambda_memory_mb"):
        project_full_cycle(prices=prices, lambda_memory_mb=64)


def test_assumption_overrides_are_validated():
    for bad in ({"lambda_concurrency": 0}, {"lambda_concurrency": 2.5}, {"vcpu_speed": 0}, {"granules_per_lambda_task": 0},
                {"s3_worker_mb_per_second": 0}):
        with pytest.raises(PriceError, match=next(iter(bad))):
            load_prices(bad)
    assert load_prices({"assumptions": {"vcpu_speed": 0.5}}).vcpu_speed == 0.5


# --- the benchmark, reduced, counted again from moto's own request log ------------------------------


def test_reduced_benchmark_counts_match_moto_request_log(tmp_path):
    from helpers import load_benchmark

    bench = load_benchmark("s3_requests")
    log = tmp_path / "moto.log"
    runs, summaries = bench.measure(("quick",), ["h5coro"], 0.0, limit=bench.QUICK_GRANULES, moto_log_copy=log)
    (run,), (summary,) = runs, summaries
    assert not run.error, run.error
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))
    lines = re.findall(r'"([A-Z]+) (/\S*) HTTP/1\.1" (\d{3})', text)
    store = run.store.removeprefix("s3://out/")

    def count(method: str, pattern: str) -> int:
        return sum(1 for m, path, _ in lines if m == method and re.fullmatch(pattern, path))

    granule_gets = count("GET", r"/granules/[^/?]+\.h5")
    assert granule_gets == sum(p["gets"] for p in run.granule_points) == summary["granule_stage"]["granule_gets"] > 0
    n_g = len(run.granule_points)
    assert 1 <= n_g <= bench.QUICK_GRANULES
    assert count("PUT", rf"/out/{re.escape(store)}\.partitions/[^/]+\.bin") == n_g
    assert count("GET", rf"/out/{re.escape(store)}\.partitions/[^/]+\.bin") == summary["segments"]
    assert count("PUT", rf"/out/{re.escape(store)}\.ledger/\d{{20}}-\d{{5}}\.json") == summary["tasks"] == len(
        run.task_points)
    # every request the proxy logged is a line of moto's log (which also holds the bucket creation and uploads)
    start, end = run.moto_span  # the run's part of moto's log (it also holds the uploads and later reads)
    run_lines = re.findall(r'"([A-Z]+) (/\S*) HTTP/1\.1" (\d{3})',
                           re.sub(r"\x1b\[[0-9;]*m", "", log.read_bytes()[start:end].decode(errors="replace")))
    assert len(run_lines) == len(run.requests) == summary["requests"]
    out_lines = sum(1 for _, path, _ in run_lines if path.startswith("/out"))
    assert out_lines == sum(1 for r in run.requests if r.bucket == "out")
    granule_lines = sum(1 for _, path, _ in run_lines if path.startswith("/granules"))
    assert granule_lines == sum(1 for r in run.requests if r.bucket == "granules")
    assert summary["moto_log_matches"]
    # the run's own cost report prices the requests the proxy counted: the measured request model applied to
    # its ledger lands within 35 % of them (the client's per-run figures, fitted on larger runs, dominate a
    # run of two tasks), where one constant of GETs per granule read by each task was off by 3x in PUTs
    counted = bench.classes(run.requests)
    reported = run.reported_cost
    assert counted["get"] > 0 and counted["put"] > 0
    assert abs(reported["s3_gets"] - counted["get"]) <= 0.35 * counted["get"], (reported["s3_gets"], counted)
    assert abs(reported["s3_puts"] - counted["put"]) <= 0.35 * counted["put"], (reported["s3_puts"], counted)
