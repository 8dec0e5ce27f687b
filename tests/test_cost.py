"""Cost model: price table, cost from the ledger alone, calibration and estimates (no demo run here)."""

from __future__ import annotations

import math

import pytest

from polaragg.cost import (
    Calibration,
    PriceError,
    calibrate,
    default_calibration,
    estimate,
    load_prices,
    project_full_cycle,
    run_cost,
    store_cost,
)
from polaragg.ledger import TaskRecord, read_records, write_record
from polaragg.stats import STATS


def rec(i: int, seconds: float, *, rows: int = 100_000, granules: int = 10, obs: int | None = None,
        attempt: int = 1, executor: str = "lambda", peak: int = 300 * 2**20,
        status: str = "ok") -> TaskRecord:
    return TaskRecord(
        parent=1000 + i, child_lo=0, child_hi=4096, status=status,
        observations=int(rows * 0.9) if obs is None else obs, rows_in_cell=rows, granules=granules,
        granules_read=granules, seconds=seconds, peak_memory_bytes=peak, attempt=attempt, executor=executor,
    )


@pytest.fixture(scope="module")
def prices():
    return load_prices()


# --- prices -----------------------------------------------------------------------------------------


def test_shipped_prices_match_reference_sheet(prices):
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


def test_overrides_dict_and_file(tmp_path):
    p = load_prices({"spot_factor": 0.3, "instances": {"c7g.4xlarge": {"hourly": 0.6},
                                                       "m7g.xlarge": {"hourly": 0.16, "vcpus": 4}}})
    assert p.spot_factor == 0.3
    assert p.instance("c7g.4xlarge").hourly == 0.6 and p.instance("c7g.4xlarge").vcpus == 16
    assert p.instance("m7g.xlarge").vcpus == 4
    assert p.lambda_gb_second_arm64 == 0.0000133334  # untouched keys keep the defaults
    f = tmp_path / "prices.yaml"
    f.write_text("prices:\n  lambda_gb_second_arm64: {value: 0.00002, source: my contract}\n"
                 "s3_get_per_1000: 0.001\n")
    p = load_prices(f)
    assert p.lambda_gb_second_arm64 == 0.00002 and p.s3_get_per_1000 == 0.001


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


# --- cost of a run ------------------------------------------------------------------------------------


def test_lambda_closed_form(prices):
    records = [rec(i, 10.0) for i in range(1000)]
    r = run_cost(records, prices, executor="lambda", lambda_memory_mb=2048, architecture="arm64")
    assert r.lambda_gb_seconds == pytest.approx(20_000.0)
    assert r.invocations == 1000
    assert r.lambda_duration_usd == pytest.approx(20_000 * 0.0000133334)
    assert r.lambda_request_usd == pytest.approx(1000 * 0.2 / 1e6)
    assert r.lambda_usd == pytest.approx(20_000 * 0.0000133334 + 1000 * 0.2 / 1e6)
    assert r.task_seconds == pytest.approx(10_000.0)
    assert r.observations == 1000 * 90_000
    assert r.observations_per_core_second == pytest.approx(9_000.0)
    assert r.peak_memory_bytes == 300 * 2**20
    s3 = 1000 * 10 * 30 * 0.0004 / 1000 + 1000 * (len(STATS) + 1) * 0.005 / 1000
    assert r.s3_gets == 300_000 and r.s3_puts == 1000 * (len(STATS) + 1)
    assert r.s3_usd == pytest.approx(s3)
    assert r.total_usd == pytest.approx(r.lambda_usd + s3)

    x86 = run_cost(records, prices, executor="lambda", architecture="x86_64")
    assert x86.lambda_duration_usd == pytest.approx(20_000 * 0.0000166667)
    assert x86.lambda_usd > r.lambda_usd


def test_lambda_bills_each_invocation_rounded_up_to_a_millisecond(prices):
    r = run_cost([rec(0, 0.0101), rec(1, 0.0005)], prices, executor="lambda", lambda_memory_mb=1024)
    assert r.lambda_gb_seconds == pytest.approx(0.011 + 0.001)


def test_retried_attempts_add_invocations(prices):
    r = run_cost([rec(0, 10.0, attempt=3), rec(1, 10.0)], prices, executor="lambda")
    assert r.invocations == 4
    assert r.lambda_gb_seconds == pytest.approx(4 * 10.0 * 2.0)
    assert r.task_seconds == pytest.approx(20.0)  # the ledger's own seconds
    assert any("retried" in n for n in r.notes)


def test_coiled_and_ec2(prices):
    # 57,600 task-seconds = 1 instance-hour on 16 vCPU
    records = [rec(i, 36.0, executor="coiled") for i in range(1600)]
    r = run_cost(records, prices)
    assert r.executor == "coiled"  # read from the records
    assert r.instance_hours == pytest.approx(1.0)
    assert r.ec2_usd == pytest.approx(0.58)
    assert r.coiled_fee_usd == pytest.approx(16 * 0.05)
    assert r.coiled_usd == pytest.approx(0.58 + 0.8)
    assert r.total_usd == pytest.approx(r.coiled_usd + r.s3_usd)
    spot = run_cost(records, prices, spot=True)
    assert spot.ec2_usd == pytest.approx(0.58 * 0.25) and spot.coiled_fee_usd == pytest.approx(0.8)
    walled = run_cost(records, prices, wall_seconds=1800.0, n_instances=4, instance="r8g.2xlarge")
    assert walled.instance_hours == pytest.approx(2.0)
    assert walled.ec2_usd == pytest.approx(2 * 0.47) and walled.coiled_fee_usd == pytest.approx(2 * 8 * 0.05)
    assert walled.wall_seconds == 1800.0


def test_local_executor_has_no_bill_but_what_ifs(prices):
    r = run_cost([rec(i, 2.0, executor="threads") for i in range(4)], prices, lambda_memory_mb=1024)
    assert r.total_usd is None
    assert r.lambda_cpu_scale == pytest.approx(1769 / 1024)  # one-core seconds on a fraction of a vCPU
    assert r.lambda_gb_seconds == pytest.approx(4 * math.ceil(2000 * 1769 / 1024) / 1000 * 1.0)
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
    assert cal.seconds_per_row > 0 and cal.seconds_per_granule > 0
    assert "demo" in cal.name and cal.machine
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


def test_full_cycle_projection(prices):
    field = project_full_cycle(default_calibration("field-lambda-s3"), prices)
    # the field reference: 87,152 Lambda-seconds at 2 GB arm64 -> $2.32
    assert field.task_seconds == pytest.approx(87_152, rel=1e-3)
    assert field.lambda_usd == pytest.approx(2.32, abs=0.01)
    assert field.observations == pytest.approx(1.37e9, rel=1e-6)
    assert field.n_tasks == 1330 and field.kind == "projection"
    assert field.wall_seconds == pytest.approx(field.max_task_seconds)
    demo = project_full_cycle(prices=prices)
    assert 0 < demo.lambda_usd < field.lambda_usd
    assert demo.coiled_usd > 0 and demo.s3_gets > 0
