"""Cost model: price table, cost from the ledger alone, calibration, estimates and the CLI cost block.

Expected figures are closed forms computed here from the documented model (Lambda: billed milliseconds x GB
x price per GB-s + invocations x price per request; EC2: task-seconds / vCPUs x hourly; Coiled: EC2 +
vCPU-hours x fee; S3: GETs and PUTs x their prices) with prices read from `polaragg/data/prices.yaml` by
yaml in this file, for synthetic ledger records whose seconds, attempts and granules are chosen here.
No demo run.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import yaml

import polaragg
from polaragg.calibration import Calibration, calibrate, default_calibration
from polaragg.cost import estimate, format_cost, project_full_cycle, run_cost, store_cost
from polaragg.ledger import TaskRecord, read_records, write_record
from polaragg.prices import PriceError, load_prices

PRICES_YAML = Path(polaragg.__file__).parent / "data" / "prices.yaml"
DOC = yaml.safe_load(PRICES_YAML.read_text())
P = {k: float(v["value"]) for k, v in DOC["prices"].items()}  # price key -> documented value
INSTANCES = DOC["instances"]


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
    for key in ("lambda_gb_seconds", "lambda_usd", "ec2_usd", "coiled_usd", "s3_usd", "task_seconds"):
        assert getattr(three, key) == pytest.approx(3 * getattr(one, key), rel=1e-12), key
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


def test_s3_requests_closed_form(prices):
    records = varied_records()
    granules_read = sum(r.granules_read for r in records)
    r = run_cost(records, prices, executor="lambda", gets_per_granule=12, puts_per_task=7)
    assert (r.s3_gets, r.s3_puts) == (granules_read * 12, len(records) * 7)
    expected = (granules_read * 12 * P["s3_get_per_1000"] / 1000
                + len(records) * 7 * P["s3_put_per_1000"] / 1000)
    assert r.s3_usd == pytest.approx(expected, rel=1e-12)
    assert r.total_usd == pytest.approx(r.lambda_usd + expected, rel=1e-12)
    default = run_cost(records, prices, executor="lambda", puts_per_task=7)
    assert default.s3_gets == granules_read * P["s3_gets_per_granule"]  # the table's model assumption


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
    s3 = (sum(r.granules_read for r in records) * P["s3_gets_per_granule"] * P["s3_get_per_1000"] / 1000
          + len(records) * 16 * P["s3_put_per_1000"] / 1000)
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


def test_estimate_scales_linearly(prices):
    cal = Calibration(seconds_per_row=2e-6, seconds_per_granule=0.0, seconds_per_task=0.0)
    tasks = [(100_000 * (i + 1), 10) for i in range(20)]
    one = estimate(tasks, cal, prices)
    two = estimate([(2 * r, g) for r, g in tasks], cal, prices)
    assert one.task_seconds == pytest.approx(2e-6 * sum(r for r, _ in tasks))
    assert two.task_seconds == pytest.approx(2 * one.task_seconds)
    assert two.lambda_gb_seconds == pytest.approx(2 * one.lambda_gb_seconds, rel=1e-3)
    assert two.coiled_usd == pytest.approx(2 * one.coiled_usd)
    assert one.kind == "estimate" and one.wall_seconds is None


def test_estimate_from_plan_like_tasks_and_wall_bounds(prices):
    class T:  # what plan.Task offers: expected_rows and a granule tuple
        def __init__(self, rows, n):
            self.expected_rows, self.granules = rows, tuple(range(n))

    cal = Calibration(seconds_per_row=1e-6, seconds_per_granule=0.1, seconds_per_task=0.5)
    tasks = [T(1_000_000, 10), T(0, 2)]
    r = estimate(tasks, cal, prices, concurrency=100)
    assert r.task_seconds == pytest.approx((1.0 + 1.0 + 0.5) + (0.2 + 0.5))
    assert r.max_task_seconds == pytest.approx(2.5) and r.wall_seconds == pytest.approx(2.5)
    assert r.granules_read == 12
    r = estimate([(1_000_000, 0)] * 64, Calibration(1e-5, 0.0), prices, n_instances=2)
    assert r.wall_seconds == pytest.approx(640 / 32)
    assert r.instance_hours == pytest.approx(2 * 20 / 3600)


@pytest.mark.parametrize("name", [n for n in DOC["calibrations"] if n != "default"])
def test_full_cycle_projection_closed_form(prices, name):
    """Task seconds are linear in size, so the cycle's total is the calibration applied to the cycle's totals:
    rows, (cell, granule) pairs = granules x pairs per granule, and one task per parent cell with data."""
    cal, cycle = DOC["calibrations"][name], DOC["antarctic_cycle"]
    n = int(cycle["parent_cells_with_data"])
    pairs = float(cycle["granules"]) * float(cycle["pairs_per_granule"])
    seconds = (float(cal["seconds_per_row"]) * float(cycle["rows"])
               + float(cal["seconds_per_granule"]) * pairs
               + float(cal.get("seconds_per_task", 0.0)) * n)
    r = project_full_cycle(default_calibration(name), prices)
    assert r.n_tasks == n and r.kind == "projection"
    assert r.task_seconds == pytest.approx(seconds, rel=1e-9)
    assert r.observations == pytest.approx(float(cycle["observations"]), rel=1e-6)
    # 2 GB arm64 by default; per-invocation rounding up to 1 ms adds at most n ms
    gb_low, gb_high = seconds * 2.0, (seconds + n * 0.001) * 2.0
    assert gb_low - 1e-6 <= r.lambda_gb_seconds <= gb_high + 1e-6
    requests = n * P["lambda_requests_per_million"] / 1e6
    assert gb_low * P["lambda_gb_second_arm64"] + requests - 1e-9 <= r.lambda_usd \
        <= gb_high * P["lambda_gb_second_arm64"] + requests + 1e-9
    c7g = INSTANCES["c7g.4xlarge"]
    hours = seconds / c7g["vcpus"] / 3600.0
    per_hour = c7g["hourly"] + c7g["vcpus"] * P["coiled_fee_per_cpu_hour"]
    assert r.coiled_usd == pytest.approx(hours * per_hour, rel=1e-9)
    assert r.wall_seconds == pytest.approx(r.max_task_seconds)  # one Lambda per task


def test_full_cycle_projection_orders_and_scales(prices):
    field = project_full_cycle(default_calibration("field-lambda-s3"), prices)
    demo = project_full_cycle(prices=prices)
    assert 0 < demo.lambda_usd < field.lambda_usd  # S3 reads are slower than local disk
    field_rate = float(DOC["calibrations"]["field-lambda-s3"]["seconds_per_row"])
    double = Calibration(seconds_per_row=2 * field_rate, seconds_per_granule=0.0)
    twice = project_full_cycle(double, prices)
    assert twice.lambda_duration_usd == pytest.approx(2 * field.lambda_duration_usd, rel=1e-4)
    assert twice.coiled_usd == pytest.approx(2 * field.coiled_usd, rel=1e-9)
    x86 = project_full_cycle(default_calibration("field-lambda-s3"), prices, architecture="x86_64")
    assert x86.lambda_duration_usd / field.lambda_duration_usd == pytest.approx(
        P["lambda_gb_second_x86_64"] / P["lambda_gb_second_arm64"], rel=1e-12)
