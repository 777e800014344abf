"""The inference log's price from paired rounds: the median per-round ratio, and how the targets use it."""

from __future__ import annotations

import pytest

from bench.paired import PairedLogCost, PairedRound
from bench.serving import BATCH_SIZES, ServingReport, evaluate_targets, report_json


def rounds(*pairs: tuple[float, float]) -> tuple[PairedRound, ...]:
    return tuple(PairedRound(slipway, logged, index % 2 == 1, 0) for index, (slipway, logged) in enumerate(pairs))


def test_the_cost_is_one_minus_the_median_ratio_of_the_rounds() -> None:
    # Given five rounds, one of them disturbed (the logged run got half the machine)
    priced = PairedLogCost(100, 4.0, 1.0, rounds((1000, 950), (900, 870), (1100, 550), (950, 900), (1000, 1010)))
    # Then the disturbed round moves the median little: the ratios are 0.95, 0.967, 0.5, 0.947, 1.01
    assert priced.median_ratio == pytest.approx(0.95)
    assert priced.cost == pytest.approx(0.05)
    assert priced.cost_range == (pytest.approx(-0.01), pytest.approx(0.5))


def test_the_log_target_reads_the_paired_rounds_and_names_them() -> None:
    # Given no single-case ratio at all, but paired rounds for both batch sizes: 4% at one row, 12% at 100
    ratios = {f"{rows}_row": {"slipway_logged_vs_slipway": None} for rows in BATCH_SIZES}
    for row in ratios.values():
        row.update(slipway_vs_mlflow_onnx=None, slipway_vs_mlflow_sklearn=None)
    priced = [
        PairedLogCost(1, 4.0, 1.0, rounds((5000, 4800), (5000, 4800), (5000, 4800))),
        PairedLogCost(100, 4.0, 1.0, rounds((1000, 880), (1000, 880), (1000, 880))),
    ]
    targets = {t.name: t for t in evaluate_targets([], None, ratios, priced)}
    one, hundred = targets["inference log cost, 1 row(s)"], targets["inference log cost, 100 row(s)"]
    assert (one.met, hundred.met) == (True, False)
    assert one.measured.startswith("4.0% of req/s (median of 3 paired rounds, 4.0% to 4.0%;")
    assert hundred.measured.startswith("12.0% of req/s")


def test_the_raw_results_carry_the_cost_the_target_read() -> None:
    priced = PairedLogCost(100, 4.0, 1.0, rounds((1000, 900), (1000, 880), (1000, 950)))
    report = ServingReport({}, {}, (), (), None, {}, (), 0.0, (priced,))
    written = report_json(report)["log_cost"][0]
    assert len(written["rounds"]) == 3
    assert (written["median_ratio"], written["cost"]) == (pytest.approx(0.9), pytest.approx(0.1))
    assert written["cost_range"] == [pytest.approx(0.05), pytest.approx(0.12)]
    # Three rounds: the lowest to the highest, which hold the median 75% of the time
    assert written["median_interval"] == {
        "low": pytest.approx(0.05),
        "high": pytest.approx(0.12),
        "coverage": pytest.approx(0.75),
    }


def test_the_median_interval_takes_the_order_statistics_of_at_least_80_percent() -> None:
    # Given seven rounds costing 1% to 7% (in a shuffled order)
    priced = PairedLogCost(100, 4.0, 1.0, rounds(*((1000, 1000 - 10 * c) for c in (4, 7, 1, 5, 2, 6, 3))))
    # Then the interval is the 2nd lowest to the 2nd highest: 1 - 2 * (1 + 7) / 128 = 87.5% (the 3rd: 54.7%)
    low, high, coverage = priced.median_interval()
    assert (low, high, coverage) == (pytest.approx(0.02), pytest.approx(0.06), pytest.approx(0.875))
    # And eleven rounds take the 3rd: 1 - 2 * (1 + 11 + 55) / 2048 = 93.5% (the 4th: 77.4%)
    eleven = PairedLogCost(100, 4.0, 1.0, rounds(*((1000, 1000 - 10 * c) for c in range(1, 12))))
    assert eleven.median_interval() == (pytest.approx(0.03), pytest.approx(0.09), pytest.approx(0.9346, abs=1e-4))


def test_a_log_target_the_rounds_put_on_both_sides_is_unresolved() -> None:
    # Given paired rounds whose median (8%) meets 10% at one row but whose interval reaches 20%, and rounds at
    # 100 rows all between 12% and 14% (a clear miss)
    ratios = {f"{rows}_row": {"slipway_logged_vs_slipway": None} for rows in BATCH_SIZES}
    for row in ratios.values():
        row.update(slipway_vs_mlflow_onnx=None, slipway_vs_mlflow_sklearn=None)
    spread = rounds(*((1000, 1000 - 10 * c) for c in (-2, 3, 6, 8, 12, 20, 25)))
    tight = rounds(*((1000, 1000 - 10 * c) for c in (12, 13, 14, 12, 13, 14, 13)))
    priced = [PairedLogCost(1, 4.0, 1.0, spread), PairedLogCost(100, 4.0, 1.0, tight)]
    targets = {t.name: t for t in evaluate_targets([], None, ratios, priced)}
    one, hundred = targets["inference log cost, 1 row(s)"], targets["inference log cost, 100 row(s)"]
    # Then one row is unresolved (the median alone says yes), 100 rows a resolved no
    assert (one.met, one.resolved) == (True, False)
    assert "the median within 3.0% to 20.0% at 87.5% confidence" in one.measured
    assert (hundred.met, hundred.resolved) == (False, True)
