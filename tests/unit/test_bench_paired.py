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
    assert one.measured.startswith("4.0% of req/s (median of 3 paired rounds, 4.0% to 4.0%)")
    assert hundred.measured.startswith("12.0% of req/s")


def test_the_raw_results_carry_the_cost_the_target_read() -> None:
    priced = PairedLogCost(100, 4.0, 1.0, rounds((1000, 900), (1000, 880), (1000, 950)))
    report = ServingReport({}, {}, (), (), None, {}, (), 0.0, (priced,))
    written = report_json(report)["log_cost"][0]
    assert len(written["rounds"]) == 3
    assert (written["median_ratio"], written["cost"]) == (pytest.approx(0.9), pytest.approx(0.1))
    assert written["cost_range"] == [pytest.approx(0.05), pytest.approx(0.12)]
