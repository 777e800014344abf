"""Monitoring: Evidently drift and what sampling does to it, GX on live inputs, latency from /metrics, the decision."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tasks.monitor import (
    ColumnDrift,
    DriftMethods,
    DriftResult,
    DriftRun,
    GuardState,
    LatencySummary,
    MonitorPolicy,
    MonitorVerdict,
    RequestHistogram,
    SloPolicy,
    decide_action,
    drift_result,
    drift_run,
    inputs_suite,
    latency_from_metrics,
    request_histogram,
    sample_frame,
    slo_check,
    write_drift_report,
)
from tasks.types import Check

REPO = Path(__file__).resolve().parents[2]
NUMERIC = [f"x{i}" for i in range(19)]
FEATURES = [*NUMERIC, "cat"]
CATEGORIES = ["a", "b", "c", "d"]
CAT_P = [0.4, 0.3, 0.2, 0.1]


def test_importing_monitor_does_not_import_evidently_gx_pandas_or_prefect():
    # Given a fresh interpreter; when tasks.monitor is imported
    code = (
        "import sys, tasks.monitor; "
        "print(sorted(m for m in ('evidently', 'great_expectations', 'pandas', 'prefect') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)

    # Then none of the slow imports happened: they wait until a function needs them
    assert out.stdout.strip() == "[]"


# --- drift ---------------------------------------------------------------------------------------------------------


def _frame(rng: np.random.Generator, rows: int) -> pd.DataFrame:
    """20 inputs like a tabular model's: 15 normal, 2 log-normal, 1 uniform, 1 count column, 1 category."""
    data: dict[str, np.ndarray] = {f"x{i}": rng.normal(0.0, 1.0, rows) for i in range(15)}
    data |= {"x15": rng.lognormal(0.0, 0.5, rows), "x16": rng.lognormal(1.0, 0.3, rows)}
    data |= {"x17": rng.uniform(0.0, 10.0, rows), "x18": rng.poisson(4.0, rows)}
    data["cat"] = rng.choice(CATEGORIES, rows, p=CAT_P)
    return pd.DataFrame(data)


def scenario(name: str, rows: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, set[str]]:
    """Reference and current frames of one drift scenario, and the columns that truly moved."""
    rng = np.random.default_rng(seed)
    reference, current = _frame(rng, rows), _frame(rng, rows)
    if name == "no_drift":
        moved: list[str] = []
    elif name == "three_of_twenty":  # a large and a moderate mean shift, a skewed column rescaled
        current["x0"] += 0.5
        current["x7"] += 0.3
        current["x15"] *= 1.5
        moved = ["x0", "x7", "x15"]
    elif name == "mean_shift":  # 12 of 20 columns move by a quarter sd: dataset drift (share 0.6)
        moved = [f"x{i}" for i in range(12)]
        current[moved] += 0.25
    elif name == "variance_shift":  # same means, wider spread; x4 only 0.06 over the threshold
        for column in ("x0", "x1", "x2", "x3"):
            current[column] *= 1.6
        current["x4"] *= 1.2
        moved = ["x0", "x1", "x2", "x3", "x4"]
    elif name == "categorical_shift":  # the category mix flattens: Jensen-Shannon 0.167
        current["cat"] = rng.choice(CATEGORIES, rows)
        moved = ["cat"]
    else:
        raise ValueError(name)
    return reference, current, set(moved)


@pytest.fixture(scope="module")
def shifted() -> DriftRun:
    """3,000 reference vs 6,000 current rows with 3 drifted inputs and drifted predictions (logged as objects)."""
    reference, current, _ = scenario("three_of_twenty", 6_000, seed=1)
    reference = reference.head(3_000).copy()
    rng = np.random.default_rng(2)
    reference["prediction"] = rng.choice([0, 1], len(reference), p=[0.7, 0.3])
    current["prediction"] = pd.Series(rng.choice([0, 1], len(current), p=[0.4, 0.6]).tolist(), dtype=object)
    return drift_run(reference, current, FEATURES, prediction_column="prediction")


def test_drift_names_the_moved_columns_with_statistic_method_and_threshold(shifted):
    # Given 3 of 20 inputs moved (when compared with the default methods)
    result = shifted.result

    # Then exactly those columns drift, each with Evidently's statistic held to the recorded threshold
    assert result.drifted_columns == ("x0", "x7", "x15")
    assert result.share == pytest.approx(3 / 20)
    assert not result.dataset_drift  # 0.15 < the 0.5 share
    by_column = {c.column: c for c in result.columns}
    assert [c.column for c in result.columns] == FEATURES
    assert by_column["x0"].method == "wasserstein" and by_column["x0"].statistic_kind == "distance"
    assert by_column["x0"].threshold == 0.1
    assert by_column["x0"].statistic == pytest.approx(0.5, abs=0.05)  # a 0.5 sd shift, normed by the sd
    assert by_column["cat"].method == "jensenshannon" and by_column["cat"].kind == "categorical"
    assert by_column["x18"].kind == "numerical"  # integer counts are numbers
    for column in result.columns:
        assert column.drifted == (column.statistic >= column.threshold), column.line()
    assert result.method == DriftMethods(num_method="wasserstein", cat_method="jensenshannon", drift_share=0.5)


def test_prediction_drift_is_reported_apart_from_the_share(shifted):
    # Given predictions that moved from 30% to 60% positives (the log holds them as Python objects)
    prediction = shifted.result.prediction_drift

    # Then prediction drift is its own entry, compared as categories, and not one of the 20 columns in the share
    assert prediction is not None
    assert prediction.column == "prediction" and prediction.kind == "categorical"
    assert prediction.drifted and prediction.statistic > 0.15
    assert "prediction" not in {c.column for c in shifted.result.columns}


def test_no_sampling_below_sample_rows_is_recorded(shifted):
    # Given frames smaller than the default 50,000-row sample
    result = shifted.result

    # Then all rows were compared, and the result says so
    assert not result.sampled
    assert (result.rows_reference, result.rows_current) == (3_000, 6_000)
    assert (result.reference_rows_total, result.current_rows_total) == (3_000, 6_000)
    assert result.sample_rows == 50_000


def test_report_is_self_contained_html_and_a_json_summary(shifted, tmp_path):
    # When the run is written as a report
    files = write_drift_report(shifted, tmp_path / "reports", stem="drift-v3")

    # Then the HTML carries Evidently's JS bundle inline (opens offline) and the JSON reads back as the result
    html = files.html.read_text(encoding="utf-8")
    assert files.html.name == "drift-v3.html"
    assert 2_000_000 < len(html) < 20_000_000
    assert "drawDashboard" in html
    skeleton = re.sub(r"<script>.*?</script>", "", html, flags=re.S)  # the page around its inline scripts
    assert "<script" not in skeleton  # every script is inline
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?https?:|url\(\s*[\"']?https?:", skeleton)  # nothing fetched
    assert "x15" in html
    assert DriftResult.model_validate_json(files.json_summary.read_text()) == shifted.result
    assert json.loads(files.json_summary.read_text())["drifted_columns"] == ["x0", "x7", "x15"]


def test_p_value_methods_flag_low_p_values():
    # Given a shifted and a stable number and a shifted category, compared with KS and chi-square p-values
    rng = np.random.default_rng(3)
    reference = pd.DataFrame(
        {"moved": rng.normal(0, 1, 800), "stable": rng.normal(0, 1, 800), "cat": rng.choice(CATEGORIES, 800, p=CAT_P)}
    )
    current = pd.DataFrame(
        {"moved": rng.normal(0.4, 1, 800), "stable": rng.normal(0, 1, 800), "cat": rng.choice(CATEGORIES, 800)}
    )

    # When drift is computed with p-value methods
    result = drift_result(
        reference, current, ["moved", "stable", "cat"], DriftMethods(num_method="ks", cat_method="chisquare")
    )

    # Then the statistics are p-values, drifting below 0.05
    by_column = {c.column: c for c in result.columns}
    assert {c.statistic_kind for c in result.columns} == {"p_value"}
    assert by_column["moved"].drifted and by_column["moved"].statistic < 0.05
    assert not by_column["stable"].drifted and by_column["stable"].statistic >= 0.05
    assert by_column["cat"].drifted and by_column["cat"].method == "chisquare"
    assert "<" in by_column["moved"].line() and "DRIFT" in by_column["moved"].line()


def test_categories_compare_as_strings_so_logged_labels_match_reference_labels():
    # Given reference labels as numpy ints and the same labels logged back as strings
    rng = np.random.default_rng(4)
    labels = rng.choice([0, 1, 2], 2_000)
    reference = pd.DataFrame({"code": labels})
    current = pd.DataFrame({"code": pd.Series([str(v) for v in labels], dtype=object)})

    # When `code` is declared categorical
    result = drift_result(reference, current, ["code"], categorical=["code"])

    # Then the distributions are identical, not disjoint
    assert result.columns[0].kind == "categorical"
    assert result.columns[0].statistic == pytest.approx(0.0, abs=1e-9)
    assert not result.columns[0].drifted


def test_numbers_logged_in_an_object_column_are_compared_as_numbers():
    # Given logged numbers that JSON left in an object column next to nulls
    rng = np.random.default_rng(6)
    reference = pd.DataFrame({"a": rng.normal(0, 1, 1_000)})
    logged = [float(v) for v in rng.normal(0, 1, 1_000)] + [None] * 10
    current = pd.DataFrame({"a": pd.Series(logged, dtype=object)})

    # When drift is computed
    result = drift_result(reference, current, ["a"])

    # Then the column is numerical and compared on its 1,000 values
    assert result.columns[0].kind == "numerical" and result.columns[0].method == "wasserstein"
    assert not result.columns[0].drifted


@pytest.mark.parametrize(
    ("reference", "current", "columns", "message"),
    [
        (pd.DataFrame({"a": [1.0]}), pd.DataFrame({"b": [1.0]}), ["a"], r"current data lacks column\(s\) \['a'\]"),
        (pd.DataFrame({"a": [1.0]}), pd.DataFrame({"a": [np.nan]}), ["a"], r"current data has no values in .*'a'"),
        (pd.DataFrame({"a": [1.0]}), pd.DataFrame({"a": ["x"]}), ["a"], "'a' is numerical in the reference but not in"),
        (pd.DataFrame({"a": [1.0]}), pd.DataFrame({"a": [1.0]}), [], "no columns"),
    ],
)
def test_unusable_inputs_fail_before_evidently_runs_naming_the_column(reference, current, columns, message):
    with pytest.raises(ValueError, match=message):
        drift_result(reference, current, columns)


def test_sample_frame_is_seeded_uniform_and_keeps_row_order():
    # Given 10,000 rows
    frame = pd.DataFrame({"i": np.arange(10_000)})

    # When 1,000 are sampled twice with one seed and once with another
    first, again, other = sample_frame(frame, 1_000, 7), sample_frame(frame, 1_000, 7), sample_frame(frame, 1_000, 8)

    # Then a seed always picks the same rows, in their original order, spread over the whole frame
    assert len(first) == 1_000 and first.equals(again) and not first.equals(other)
    assert first["i"].is_monotonic_increasing and first["i"].is_unique
    assert first["i"].mean() == pytest.approx(5_000, rel=0.05)
    assert sample_frame(frame, 20_000, 7) is frame and sample_frame(frame, None, 7) is frame


def _assert_sampled_matches_full(full: DriftResult, sampled: DriftResult) -> None:
    assert sampled.drifted_columns == full.drifted_columns
    for whole, part in zip(full.columns, sampled.columns, strict=True):
        # Near the 0.1 thresholds the sample's statistic was within 0.0093 of the full one over 10 scenario runs;
        # the error grows with the statistic (1-2% of it), far from where a column could change sides.
        assert part.statistic == pytest.approx(whole.statistic, abs=0.015, rel=0.03), (whole.line(), part.line())


def test_sampling_keeps_the_drifted_columns_on_four_kinds_of_column():
    # Given 100,000 rows a side: a stable column, a mean shift, a variance shift and a category shift
    rng = np.random.default_rng(5)
    rows = 100_000
    reference = pd.DataFrame(
        {
            "stable": rng.normal(0, 1, rows),
            "mean": rng.normal(0, 1, rows),
            "spread": rng.normal(0, 1, rows),
            "cat": rng.choice(CATEGORIES, rows, p=CAT_P),
        }
    )
    current = pd.DataFrame(
        {
            "stable": rng.normal(0, 1, rows),
            "mean": rng.normal(0.2, 1, rows),
            "spread": rng.normal(0, 1.25, rows),
            "cat": rng.choice(CATEGORIES, rows),
        }
    )
    columns = list(reference.columns)

    # When drift is computed on all rows and on the default 50,000-row samples
    full = drift_result(reference, current, columns, sample_rows=None)
    sampled = drift_result(reference, current, columns)

    # Then the same columns drift, every statistic close to the full one, and the sampled result says what it compared
    assert full.drifted_columns == ("mean", "spread", "cat")
    _assert_sampled_matches_full(full, sampled)
    assert not full.sampled and (full.rows_current, full.rows_reference) == (rows, rows)
    assert sampled.sampled and (sampled.rows_current, sampled.rows_reference) == (50_000, 50_000)
    assert (sampled.current_rows_total, sampled.reference_rows_total) == (rows, rows)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["no_drift", "three_of_twenty", "mean_shift", "variance_shift", "categorical_shift"])
def test_sampling_gives_the_full_computations_drifted_columns_at_100k_rows(name):
    # Given a drift scenario of 100,000 rows x 20 inputs a side
    reference, current, moved = scenario(name, 100_000)

    # When drift is computed on all rows and on the default 50,000-row samples
    full = drift_result(reference, current, FEATURES, sample_rows=None)
    sampled = drift_result(reference, current, FEATURES)

    # Then the full computation finds the columns that moved, and the sample finds the same ones
    assert set(full.drifted_columns) == moved
    _assert_sampled_matches_full(full, sampled)
    assert sampled.dataset_drift == full.dataset_drift == (name == "mean_shift")


# --- data quality on live inputs ---------------------------------------------------------------------------------


def test_inputs_suite_drops_the_label_and_passes_on_live_inputs():
    from examples import breast_cancer
    from tasks.validate import load_suite, run_suite

    # Given the release suite (which checks the malignant label) and logged inputs, which have no label
    suite = load_suite(REPO / "configs" / "expectations" / "breast_cancer.yaml")
    inputs = breast_cancer.load_data().drop(columns=["malignant"])

    # When the suite is reduced to the inputs
    live = inputs_suite(suite, target="malignant")

    # Then nothing in it names the label, the column set lost only the label, and good inputs pass
    assert all("malignant" not in json.dumps(spec.kwargs) for spec in live.expectations)
    assert len(live.expectations) == len(suite.expectations) - 3  # not-null, in-set and mean of the label
    column_set = next(s for s in live.expectations if s.type == "expect_table_columns_to_match_set")
    assert set(column_set.kwargs["column_set"]) == set(inputs.columns)
    assert run_suite(suite, inputs).passed is False  # the release suite itself would report an incident
    check = run_suite(live, inputs)
    assert check.passed, check.detail

    # And a null and an unknown category in live traffic fail it, naming the columns
    bad = inputs.copy()
    bad.loc[bad.index[:2], "mean_radius"] = np.nan
    bad.loc[bad.index[5], "size_band"] = "enormous"
    failed = run_suite(live, bad)
    assert not failed.passed
    assert "mean_radius" in failed.detail and "size_band" in failed.detail


# --- latency and errors from /metrics ------------------------------------------------------------------------------

# BentoML 1.4's RunnerTrafficMetricsMiddleware (bentoml/_internal/server/http/instruments.py), namespace from
# api_server.metrics.namespace (default bentoml_service), buckets from bentoml/_internal/utils/metrics.py.
BENTOML_LABELS = ["endpoint", "service_name", "service_version", "http_response_code", "runner_name"]
BENTOML_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 180.0, math.inf)


class FakeService:
    """The request metrics a BentoML service exports, recorded in a fresh registry."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.duration = Histogram(
            "request_duration_seconds",
            "runner RPC duration in seconds",
            BENTOML_LABELS,
            namespace="bentoml_service",
            registry=self.registry,
            buckets=BENTOML_BUCKETS,
        )
        self.total = Counter(
            "request_total",
            "Total number of runner RPC",
            BENTOML_LABELS,
            namespace="bentoml_service",
            registry=self.registry,
        )

    def serve(self, endpoint: str, code: int, seconds: float, times: int = 1) -> None:
        labels = {
            "endpoint": endpoint,
            "service_name": "slipway",
            "service_version": "abc123",
            "http_response_code": str(code),
            "runner_name": "SlipwayService",
        }
        for _ in range(times):
            self.total.labels(**labels).inc()
            self.duration.labels(**labels).observe(seconds)

    def scrape(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


def test_percentiles_interpolate_inside_buckets_like_prometheus():
    # Given 900 fast requests (3 ms) and 100 slow ones (200 ms), plus health checks that must not count
    service = FakeService()
    service.serve("/predict", 200, 0.003, times=900)
    service.serve("/predict", 200, 0.200, times=100)
    service.serve("/readyz", 200, 2.0, times=50)

    # When the scrape is read
    latency = latency_from_metrics(service.scrape(), "/predict")

    # Then p50 falls in the first bucket (0-5 ms) and p95/p99 in the 100-250 ms bucket, interpolated linearly
    assert latency.requests == 1000 and latency.errors == 0 and latency.error_rate == 0.0
    assert latency.p50_ms == pytest.approx(5.0 * 500 / 900)
    assert latency.p95_ms == pytest.approx(100 + 150 * 50 / 100)
    assert latency.p99_ms == pytest.approx(100 + 150 * 90 / 100)
    assert latency.mean_ms == pytest.approx(0.9 * 3 + 0.1 * 200)


def test_error_rate_counts_5xx_across_status_codes_but_not_4xx():
    # Given 940 answers, 40 rejected inputs (422) and 20 server errors (500, 503)
    service = FakeService()
    service.serve("/predict", 200, 0.01, times=940)
    service.serve("/predict", 422, 0.002, times=40)
    service.serve("/predict", 500, 0.03, times=15)
    service.serve("/predict", 503, 0.001, times=5)

    # When the scrape is read
    latency = latency_from_metrics(service.scrape())

    # Then every response counts in the latency, and only the 5xx ones as errors
    assert latency.requests == 1000
    assert latency.errors == 20 and latency.error_rate == pytest.approx(0.02)


def test_a_window_is_the_difference_of_two_scrapes():
    # Given a healthy hour, a scrape, then a slow and failing window, then a second scrape
    service = FakeService()
    service.serve("/predict", 200, 0.004, times=5000)
    before = service.scrape()
    service.serve("/predict", 200, 0.4, times=180)
    service.serve("/predict", 500, 0.02, times=20)
    after = service.scrape()

    # When the window is read from the two scrapes (as text or as a parsed histogram)
    window = latency_from_metrics(after, since=before)
    again = latency_from_metrics(after, since=request_histogram(before))
    whole = latency_from_metrics(after)

    # Then only the window's 200 requests count: its p99 is in the 250-500 ms bucket, 10% are errors
    assert window == again
    assert window.requests == 200 and window.errors == 20 and window.error_rate == pytest.approx(0.1)
    assert window.p99_ms is not None and whole.p99_ms is not None
    assert 250 < window.p99_ms <= 500
    assert whole.requests == 5200 and whole.p99_ms < window.p99_ms


def test_a_counter_reset_between_scrapes_reads_the_second_scrape_alone():
    # Given a scrape, then a restarted service (counters from zero) that answered 300 requests
    old = FakeService()
    old.serve("/predict", 200, 0.004, times=5000)
    restarted = FakeService()
    restarted.serve("/predict", 200, 0.03, times=300)

    # When the window is read across the restart
    window = latency_from_metrics(restarted.scrape(), since=old.scrape())

    # Then it is what the restarted service saw, not a negative count
    assert window.requests == 300
    assert window.p50_ms is not None and 25 < window.p50_ms <= 50


def test_an_endpoint_without_requests_has_no_percentiles():
    # Given a service that has only answered health checks
    service = FakeService()
    service.serve("/readyz", 200, 0.001, times=3)

    # When /predict is read
    latency = latency_from_metrics(service.scrape())

    # Then there is no latency to report, and no error rate
    assert latency.requests == 0
    assert latency.p50_ms is latency.p99_ms is latency.error_rate is None


def test_requests_beyond_the_last_bucket_report_its_bound():
    histogram = RequestHistogram(
        endpoint="/predict", bounds=(0.1, 1.0), cumulative=(0.0, 0.0), count=10, errors=0, sum_seconds=30
    )
    assert histogram.quantile_ms(0.99) == 1000.0


def test_text_that_is_not_prometheus_is_refused():
    with pytest.raises(ValueError, match="not Prometheus exposition text"):
        latency_from_metrics("<html>502 Bad Gateway</html>\n")


def test_slo_is_not_judged_on_too_few_requests():
    latency = LatencySummary(
        endpoint="/predict", requests=5, errors=5, p50_ms=900, p95_ms=900, p99_ms=900, error_rate=1.0, mean_ms=900
    )
    check = slo_check(latency, SloPolicy(min_requests=100))
    assert not check.evaluated and not check.breached
    assert "5 requests, fewer than the 100" in check.detail


# --- the decision ------------------------------------------------------------------------------------------------

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
POLICY = MonitorPolicy(
    min_rows=500,
    cooldown_minutes=60,
    max_retrains_per_day=2,
    bake_window_minutes=60,
    slo=SloPolicy(p99_ms=250, error_rate=0.01, min_requests=100),
)


def drift_of(drifted: tuple[str, ...] = (), prediction_drifted: bool = False, columns: int = 4) -> DriftResult:
    names = [f"f{i}" for i in range(columns)]
    per_column = tuple(
        ColumnDrift(
            column=name,
            kind="numerical",
            method="wasserstein",
            statistic=0.3 if name in drifted else 0.02,
            statistic_kind="distance",
            threshold=0.1,
            drifted=name in drifted,
        )
        for name in names
    )
    prediction = ColumnDrift(
        column="prediction",
        kind="categorical",
        method="jensenshannon",
        statistic=0.2 if prediction_drifted else 0.01,
        statistic_kind="distance",
        threshold=0.1,
        drifted=prediction_drifted,
    )
    return DriftResult(
        share=len(drifted) / columns,
        threshold_share=0.5,
        drifted_columns=drifted,
        columns=per_column,
        method=DriftMethods(),
        prediction_drift=prediction,
        rows_reference=2000,
        rows_current=5000,
        reference_rows_total=2000,
        current_rows_total=5000,
        sampled=False,
        sample_rows=50_000,
        seed=0,
    )


DRIFT = drift_of(("f0", "f1"))  # share 0.5: dataset drift
NO_DRIFT = drift_of()


def latency_of(p99_ms: float = 40.0, error_rate: float = 0.0, requests: int = 1000) -> LatencySummary:
    return LatencySummary(
        endpoint="/predict",
        requests=requests,
        errors=round(error_rate * requests),
        p50_ms=5.0,
        p95_ms=min(p99_ms, 20.0),
        p99_ms=p99_ms,
        error_rate=error_rate,
        mean_ms=6.0,
    )


def quality(passed: bool = True) -> Check:
    detail = "all expectations hold" if passed else "1 of 40 expectations failed: mean_radius: 30 unexpected nulls"
    return Check(name="data_quality", passed=passed, detail=detail)


def decide(**given: Any) -> MonitorVerdict:
    arguments: dict[str, Any] = {
        "rows": 5000,
        "drift": NO_DRIFT,
        "data_quality": quality(),
        "latency": latency_of(),
        "state": GuardState(),
        "policy": POLICY,
        "now": NOW,
    }
    return decide_action(**(arguments | given))


def test_healthy_window_is_ok_and_does_nothing():
    verdict = decide()
    assert (verdict.status, verdict.action, verdict.guardrail) == ("ok", "none", None)
    assert verdict.slo is not None and verdict.slo.evaluated and not verdict.slo.breached
    assert verdict.next_state == GuardState()


def test_too_few_rows_is_insufficient_data_and_no_action_even_with_drift():
    verdict = decide(rows=120, drift=DRIFT)
    assert (verdict.status, verdict.action) == ("insufficient_data", "none")
    assert "120 logged rows in the window, fewer than the 500" in verdict.reason
    assert verdict.next_state == GuardState()


def test_drift_over_the_share_starts_a_retrain_and_opens_an_episode():
    verdict = decide(drift=DRIFT, model_version="7", report_path=Path("/reports/drift.html"))
    assert (verdict.status, verdict.action) == ("drift", "retrain")
    assert verdict.episode_id == "drift-20250602T120000Z"
    assert "f0, f1" in verdict.reason
    state = verdict.next_state
    assert state.drift_episode_id == verdict.episode_id and state.drift_episode_started_at == NOW
    assert state.episode_retrained_at == NOW and state.retrains == (NOW,)
    assert (state.last_action, state.last_action_at) == ("retrain", NOW)
    markdown = verdict.to_markdown()
    assert "drift -> retrain" in markdown and "| f0 | wasserstein (distance) | 0.3 | 0.1 | **yes** |" in markdown
    assert "/reports/drift.html" in markdown and "model version**: 7" in markdown


def test_drift_below_the_share_does_nothing():
    verdict = decide(drift=drift_of(("f0",)))  # 1 of 4 columns
    assert (verdict.status, verdict.action) == ("ok", "none")


def test_prediction_drift_alone_retrains_unless_the_policy_says_otherwise():
    drift = drift_of(prediction_drifted=True)
    assert decide(drift=drift).action == "retrain"
    ignoring = POLICY.model_copy(update={"retrain_on_prediction_drift": False})
    assert decide(drift=drift, policy=ignoring).action == "none"


def test_exactly_one_retrain_per_drift_episode():
    # Given a drift that starts a retrain
    first = decide(drift=DRIFT)
    assert first.action == "retrain"

    # When the drift is still there two and five hours later (cooldown over) and the retrain is not promoted yet
    second = decide(drift=DRIFT, state=first.next_state, now=NOW + timedelta(hours=2))
    third = decide(drift=DRIFT, state=second.next_state, now=NOW + timedelta(hours=5))

    # Then no second retrain starts for the same episode
    for later in (second, third):
        assert (later.status, later.action, later.guardrail) == ("drift", "blocked", "episode_retrained")
        assert later.episode_id == first.episode_id
        assert "one retrain per drift episode" in later.reason
    assert third.next_state.retrains == (NOW,)

    # And once the drift clears, the episode closes, and a new drift later is a new episode with its own retrain
    cleared = decide(drift=NO_DRIFT, state=third.next_state, now=NOW + timedelta(hours=6))
    assert cleared.next_state.drift_episode_id is None and cleared.episode_id is None
    assert f"drift episode {first.episode_id} closed" in cleared.reason
    again = decide(drift=DRIFT, state=cleared.next_state, now=NOW + timedelta(hours=30))
    assert again.action == "retrain" and again.episode_id != first.episode_id


def test_a_run_without_drift_numbers_leaves_the_episode_open():
    opened = decide(drift=DRIFT).next_state
    verdict = decide(drift=None, state=opened, now=NOW + timedelta(hours=2))
    assert (verdict.status, verdict.action) == ("ok", "none")
    assert verdict.next_state == opened and verdict.episode_id == opened.drift_episode_id


def test_a_retrain_that_cleared_the_drift_is_remembered():
    retrained = decide(drift=DRIFT).next_state
    promoted = retrained.model_copy(update={"last_promotion_at": NOW + timedelta(minutes=40)})
    verdict = decide(drift=NO_DRIFT, state=promoted, now=NOW + timedelta(hours=1))
    assert verdict.action == "none"
    assert verdict.next_state.last_retrain_cleared_drift is True
    assert verdict.next_state.episode_retrained_at is None


def test_circuit_breaker_opens_when_the_promoted_retrain_did_not_clear_the_drift():
    # Given an episode whose retrain was promoted 40 minutes after it started
    retrained = decide(drift=DRIFT).next_state
    promoted = retrained.model_copy(update={"last_promotion_at": NOW + timedelta(minutes=40)})

    # When the drift is still there after the promotion
    verdict = decide(drift=DRIFT, state=promoted, now=NOW + timedelta(hours=2))

    # Then the breaker opens: no retrain, a person is asked to look
    assert (verdict.status, verdict.action, verdict.guardrail) == ("drift", "blocked", "circuit_breaker")
    assert "was promoted and the drift stayed" in verdict.reason
    assert verdict.next_state.last_retrain_cleared_drift is False and verdict.next_state.breaker_open

    # And it stays open across episodes: a later, new drift does not retrain either
    cleared = decide(drift=NO_DRIFT, state=verdict.next_state, now=NOW + timedelta(hours=3))
    assert cleared.next_state.breaker_open
    later = decide(drift=DRIFT, state=cleared.next_state, now=NOW + timedelta(days=2))
    assert (later.action, later.guardrail) == ("blocked", "circuit_breaker")

    # Until a person resets it
    reset = later.next_state.model_copy(update={"last_retrain_cleared_drift": None})
    assert decide(drift=DRIFT, state=reset, now=NOW + timedelta(days=2)).action == "retrain"


def test_a_retrain_that_ended_without_promotion_opens_the_breaker_when_the_flow_says_so():
    state = decide(drift=DRIFT).next_state.model_copy(update={"last_retrain_cleared_drift": False})
    verdict = decide(drift=DRIFT, state=state, now=NOW + timedelta(hours=3))
    assert (verdict.action, verdict.guardrail) == ("blocked", "circuit_breaker")


def test_cooldown_holds_a_retrain_until_it_has_passed():
    state = GuardState(last_action="redeploy", last_action_at=NOW - timedelta(minutes=20))
    held = decide(drift=DRIFT, state=state)
    assert (held.status, held.action, held.guardrail) == ("drift", "blocked", "cooldown")
    assert "runs 40 min more" in held.reason
    assert held.next_state.drift_episode_id == held.episode_id  # the episode is open, waiting
    assert held.next_state.episode_retrained_at is None
    later = decide(drift=DRIFT, state=held.next_state, now=NOW + timedelta(minutes=41))
    assert later.action == "retrain" and later.episode_id == held.episode_id


def test_max_retrains_per_day_counts_the_last_24_hours():
    busy = GuardState(retrains=(NOW - timedelta(hours=20), NOW - timedelta(hours=3)))
    verdict = decide(drift=DRIFT, state=busy)
    assert (verdict.action, verdict.guardrail) == ("blocked", "max_retrains")
    assert "2 retrains in the last 24 h, the most allowed is 2" in verdict.reason

    aged = GuardState(retrains=(NOW - timedelta(hours=25), NOW - timedelta(hours=3)))
    allowed = decide(drift=DRIFT, state=aged)
    assert allowed.action == "retrain"
    assert allowed.next_state.retrains == (NOW - timedelta(hours=3), NOW)  # older than a day: forgotten


def test_failed_data_quality_is_a_data_incident_and_blocks_the_retrain():
    verdict = decide(drift=DRIFT, data_quality=quality(passed=False))
    assert (verdict.status, verdict.action, verdict.guardrail) == ("data_incident", "blocked", "data_quality")
    assert "data incident, reported and stopped" in verdict.reason and "mean_radius" in verdict.reason
    assert verdict.next_state == GuardState()

    quiet = decide(drift=NO_DRIFT, data_quality=quality(passed=False))
    assert (quiet.status, quiet.action, quiet.guardrail) == ("data_incident", "none", None)


def test_unreachable_serving_never_retrains():
    verdict = decide(drift=DRIFT, latency=None)
    assert (verdict.status, verdict.action, verdict.guardrail) == (
        "serving_unreachable",
        "blocked",
        "serving_unreachable",
    )
    assert verdict.next_state == GuardState()
    quiet = decide(latency=None)
    assert (quiet.status, quiet.action) == ("serving_unreachable", "none")


def test_slo_breach_within_the_bake_window_rolls_back():
    state = GuardState(last_promotion_at=NOW - timedelta(minutes=25))
    verdict = decide(latency=latency_of(p99_ms=480.0), state=state)
    assert (verdict.status, verdict.action) == ("slo_breach", "rollback")
    assert "p99 480 ms > 250 ms" in verdict.reason and "25 min after the last promotion" in verdict.reason
    assert (verdict.next_state.last_action, verdict.next_state.last_action_at) == ("rollback", NOW)


def test_slo_breach_outside_the_bake_window_redeploys():
    long_ago = decide(latency=latency_of(error_rate=0.05), state=GuardState(last_promotion_at=NOW - timedelta(days=3)))
    never = decide(latency=latency_of(p99_ms=900.0))
    for verdict in (long_ago, never):
        assert (verdict.status, verdict.action) == ("slo_breach", "redeploy")
    assert "5xx rate 5.00% > 1.00%" in long_ago.reason


def test_slo_on_too_few_requests_is_not_a_breach():
    verdict = decide(latency=latency_of(p99_ms=5000.0, error_rate=1.0, requests=20))
    assert (verdict.status, verdict.action) == ("ok", "none")
    assert verdict.slo is not None and not verdict.slo.evaluated


def test_slo_breach_acts_even_when_the_log_is_empty():
    # Every request failing leaves nothing in the inference log; the breach must not hide behind "insufficient data"
    verdict = decide(rows=0, drift=None, data_quality=None, latency=latency_of(error_rate=1.0))
    assert (verdict.status, verdict.action) == ("slo_breach", "redeploy")


def test_slo_breach_comes_before_drift():
    state = GuardState(last_promotion_at=NOW - timedelta(minutes=10))
    verdict = decide(drift=DRIFT, latency=latency_of(p99_ms=600.0), state=state)
    assert verdict.action == "rollback"
    assert "drift seen" in verdict.reason
    assert verdict.next_state.drift_episode_id is None  # the drift is judged on the next run, after the rollback


def test_cooldown_holds_a_redeploy():
    state = GuardState(last_action="redeploy", last_action_at=NOW - timedelta(minutes=10))
    verdict = decide(latency=latency_of(p99_ms=600.0), state=state)
    assert (verdict.status, verdict.action, verdict.guardrail) == ("slo_breach", "blocked", "cooldown")


def test_cooldown_does_not_hold_a_rollback_of_a_promotion_made_after_the_last_action():
    # Given a retrain 30 min ago whose model was promoted 10 min ago and now breaches the SLO
    state = GuardState(
        last_action="retrain", last_action_at=NOW - timedelta(minutes=30), last_promotion_at=NOW - timedelta(minutes=10)
    )
    verdict = decide(latency=latency_of(p99_ms=600.0), state=state)
    assert verdict.action == "rollback"

    # But once rolled back, a breach 5 min later waits for the cooldown instead of rolling back again
    again = decide(latency=latency_of(p99_ms=600.0), state=verdict.next_state, now=NOW + timedelta(minutes=5))
    assert (again.action, again.guardrail) == ("blocked", "cooldown")


def test_verdict_and_guard_state_survive_json():
    # Given a verdict that retrained (the flow stores next_state between runs and the verdict as an artifact)
    verdict = decide(drift=DRIFT, data_quality=Check(name="data_quality", passed=True, measured={"rows": 5000}))

    # When both go through JSON and back
    state = GuardState.model_validate_json(verdict.next_state.model_dump_json())
    again = type(verdict).model_validate_json(verdict.model_dump_json())

    # Then nothing is lost
    assert state == verdict.next_state
    assert again == verdict


def test_naive_datetimes_are_taken_as_utc():
    naive = GuardState(last_action="retrain", last_action_at=datetime(2025, 6, 2, 11, 30))
    assert naive.last_action_at == datetime(2025, 6, 2, 11, 30, tzinfo=UTC)
    verdict = decide(drift=DRIFT, state=naive, now=datetime(2025, 6, 2, 12, 0))
    assert verdict.guardrail == "cooldown" and verdict.decided_at == NOW
