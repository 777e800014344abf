"""Release gate checks: the GX data suite, parity, quality against the champion, latency and the report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, mean_absolute_error, mean_squared_error, r2_score, roc_auc_score
from sklearn.model_selection import train_test_split

from configs.loader import ConfigError
from configs.settings import LatencyGate, QualityGate
from examples import breast_cancer, diabetes
from tasks.predict import Predictions, predict_native
from tasks.types import Check, FeatureSpec, GateReport, ModelSchema, Parity, Timing
from tasks.validate import (
    SuiteSpec,
    gate_report,
    higher_is_better,
    latency_check,
    load_suite,
    metric_name,
    parity_check,
    quality_check,
    run_suite,
    score,
    write_report,
)

REPO = Path(__file__).resolve().parents[2]
SUITES = REPO / "configs" / "expectations"


@pytest.fixture(scope="module")
def breast_frame() -> pd.DataFrame:
    return breast_cancer.load_data()


@pytest.fixture(scope="module")
def diabetes_frame() -> pd.DataFrame:
    return diabetes.load_data()


@pytest.fixture(scope="module")
def breast_suite() -> SuiteSpec:
    return load_suite(SUITES / "breast_cancer.yaml")


@pytest.fixture(scope="module")
def diabetes_suite() -> SuiteSpec:
    return load_suite(SUITES / "diabetes.yaml")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


# --- data quality suite -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suite_name", "loader"), [("breast_cancer", breast_cancer.load_data), ("diabetes", diabetes.load_data)]
)
def test_shipped_suites_pass_on_example_data_and_its_holdout(suite_name, loader):
    # Given a shipped suite and its example data, whole and as the holdout split the release gate validates
    suite = load_suite(SUITES / f"{suite_name}.yaml")
    frame = loader()
    _, holdout = train_test_split(frame, test_size=0.25, random_state=42)

    # When each is validated
    checks = [run_suite(suite, frame), run_suite(suite, holdout)]

    # Then every expectation holds, and the check says how many ran
    for check in checks:
        assert check.name == "data_quality"
        assert check.passed, check.detail
        assert check.measured["failed"] == 0
        assert check.measured["expectations"] == len(suite.expectations)


def test_shipped_suites_are_not_trivial(breast_suite, diabetes_suite):
    # Given the shipped suites
    # When their expectation types are listed
    kinds = {spec.type for suite in (breast_suite, diabetes_suite) for spec in suite.expectations}

    # Then they check columns, row count, nulls, ranges and categories, not just that the table exists
    assert {
        "expect_table_columns_to_match_set",
        "expect_table_row_count_to_be_between",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_in_set",
    } <= kinds


def test_bad_breast_cancer_data_fails_naming_each_column_and_count(breast_suite, breast_frame):
    # Given the example data with 3 null radii, 1 impossible worst_area and 2 unknown size bands
    bad = breast_frame.copy()
    bad.loc[bad.index[:3], "mean_radius"] = np.nan
    bad.loc[bad.index[10], "worst_area"] = 99_999.0
    bad.loc[bad.index[20:22], "size_band"] = "huge"

    # When the suite runs
    check = run_suite(breast_suite, bad)

    # Then it fails, and the detail names each column with its unexpected count and an example value
    assert not check.passed
    assert check.measured["failed"] == 3
    assert "expect_column_values_to_not_be_null(mean_radius): 3 unexpected of 569" in check.detail
    assert "expect_column_values_to_be_between(worst_area): 1 unexpected of 569 (0.18%), e.g. [99999.0]" in check.detail
    assert "expect_column_values_to_be_in_set(size_band): 2 unexpected" in check.detail
    assert "'huge'" in check.detail
    assert len(check.measured["failed_expectations"]) == 3


def test_bad_diabetes_data_fails_naming_category_and_target(diabetes_suite, diabetes_frame):
    # Given diabetes rows with an unknown sex code and a negative progression
    bad = diabetes_frame.copy()
    bad.loc[bad.index[0], "sex"] = "c"
    bad.loc[bad.index[1], "progression"] = -5.0

    # When the suite runs
    check = run_suite(diabetes_suite, bad)

    # Then both columns are named with what was found
    assert not check.passed
    assert "expect_column_values_to_be_in_set(sex): 1 unexpected" in check.detail
    assert "e.g. ['c']" in check.detail
    assert "expect_column_values_to_be_between(progression): 1 unexpected" in check.detail


def test_missing_column_and_too_few_rows_fail_with_what_was_observed(diabetes_suite, diabetes_frame):
    # Given 10 rows without the bmi column
    bad = diabetes_frame.drop(columns=["bmi"]).head(10)

    # When the suite runs
    check = run_suite(diabetes_suite, bad)

    # Then the column set names bmi as missing, the bmi expectations report the error, and the row count is shown
    failures = "\n".join(check.measured["failed_expectations"])
    assert not check.passed
    assert "expect_table_columns_to_match_set: missing ['bmi']" in failures
    assert "expect_column_values_to_not_be_null(bmi): error:" in failures
    assert "expect_table_row_count_to_be_between: observed 10; expected min_value=50" in failures


def test_run_suite_writes_no_files_and_prints_nothing(breast_suite, breast_frame, tmp_path, monkeypatch, capfd):
    # Given an empty working directory
    monkeypatch.chdir(tmp_path)

    # When a suite runs (passing and failing)
    run_suite(breast_suite, breast_frame)
    run_suite(breast_suite, breast_frame.head(5))

    # Then GX left no gx/ folder or other file behind and drew no progress bars on stdout or stderr
    assert list(tmp_path.iterdir()) == []
    assert not (REPO / "gx").exists()
    out, err = capfd.readouterr()
    assert out == ""
    assert "Calculating Metrics" not in err


def test_unknown_expectation_type_raises_naming_file_and_entry(tmp_path):
    # Given a suite whose second entry has a misspelled expectation type
    path = _write(
        tmp_path,
        """
name: broken
expectations:
  - type: expect_column_values_to_not_be_null
    kwargs: {column: a}
  - type: expect_column_values_to_be_betwen
    kwargs: {column: a, min_value: 0}
""",
    )

    # When it is loaded (before any data is read or validated)
    with pytest.raises(ConfigError) as caught:
        load_suite(path)

    # Then the error names the file, the entry index and the unknown type, and suggests the right one
    message = str(caught.value)
    assert f"{path}: expectations[1] (expect_column_values_to_be_betwen): unknown expectation type" in message
    assert "did you mean 'expect_column_values_to_be_between'" in message
    assert "expectations[0]" not in message


def test_bad_kwargs_raise_naming_file_entry_and_field(tmp_path):
    # Given a suite with a misspelled kwarg in entry 0 and a non-numeric bound in entry 1
    path = _write(
        tmp_path,
        """
name: broken
expectations:
  - type: expect_column_values_to_not_be_null
    kwargs: {colum: a}
  - type: expect_column_values_to_be_between
    kwargs: {column: a, min_value: low}
""",
    )

    # When it is loaded
    with pytest.raises(ConfigError) as caught:
        load_suite(path)

    # Then every bad entry is listed with the file and the offending field
    problems = caught.value.problems
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}: expectations[0] (expect_column_values_to_not_be_null): bad kwargs")
    assert "colum: extra fields not permitted" in problems[0]
    assert problems[1].startswith(f"{path}: expectations[1] (expect_column_values_to_be_between): bad kwargs")
    assert "min_value" in problems[1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: s\nexpectations: []\n", "expectations: tuple should have at least 1 item"),
        ("name: s\nexpectation:\n  - type: x\n", "expectation: extra inputs are not permitted"),
        ("name: s\nexpectations:\n  - kwargs: {column: a}\n", "expectations[0].type: field required"),
        ("- just a list\n", "top level must be a mapping"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_malformed_suite_file_raises_naming_file_and_field(tmp_path, text, expected):
    # Given a structurally wrong suite file
    path = _write(tmp_path, text)

    # When it is loaded
    with pytest.raises(ConfigError) as caught:
        load_suite(path)

    # Then the message names the file and the field
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_missing_suite_file_raises_naming_it(tmp_path):
    # Given a path with no file; when it is loaded; then the error names the path
    with pytest.raises(ConfigError, match="expectation suite file not found"):
        load_suite(tmp_path / "nope.yaml")


def test_importing_validate_does_not_import_great_expectations():
    # Given a fresh interpreter; when tasks.validate is imported
    code = "import sys, tasks.validate; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)

    # Then GX (seconds to import) is not loaded until a suite is used
    assert out.stdout.strip() == "False"


# --- parity ---------------------------------------------------------------------------------------------------


def _parity(diff: float = 1e-6, flips: float = 0.0, rows: int = 143) -> Parity:
    return Parity(
        rows=rows, max_abs_diff=diff, label_flip_rate=flips, max_abs_diff_allowed=1e-4, label_flip_rate_allowed=0.001
    )


def test_parity_within_limits_passes():
    # Given ONNX outputs within the fp32 bounds; when checked; then it passes and reports numbers and limits
    check = parity_check(_parity(), "fp32")
    assert check.passed
    assert check.measured == {"max_abs_diff": 1e-6, "label_flip_rate": 0.0, "rows": 143}
    assert check.limits == {"max_abs_diff": 1e-4, "label_flip_rate": 0.001}
    assert "'fp32'" in check.detail


def test_parity_score_drift_fails_naming_variant_and_numbers():
    # Given an int8 variant whose probabilities moved 0.02; when checked; then it fails with both numbers
    check = parity_check(_parity(diff=0.02), "int8")
    assert not check.passed
    assert check.detail == "ONNX variant 'int8': max |onnx - native| 0.02 > 0.0001"


def test_parity_label_flips_fail():
    # Given 1% of labels flipped; when checked; then it fails on the flip rate
    check = parity_check(_parity(flips=0.01), "fp32")
    assert not check.passed
    assert "label flip rate 0.01 > 0.001" in check.detail


def test_parity_on_zero_rows_fails():
    # Given a parity measured on no rows; when checked; then it fails instead of passing vacuously
    check = parity_check(_parity(diff=0.0, rows=0), "fp32")
    assert not check.passed
    assert "no rows were compared" in check.detail


# --- metrics ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "configured", "expected"),
    [
        ("classification", "auto", "roc_auc"),
        ("regression", "auto", "rmse"),
        ("classification", "f1", "f1"),
        ("regression", "r2", "r2"),
    ],
)
def test_metric_name_resolves_auto_and_keeps_explicit(task, configured, expected):
    # Given a task and the configured metric; when resolved; then auto picks the task default
    assert metric_name(task, configured) == expected


@pytest.mark.parametrize(
    ("task", "configured"), [("classification", "rmse"), ("regression", "roc_auc"), ("regression", "mape")]
)
def test_metric_name_rejects_metric_of_other_task(task, configured):
    # Given a metric that does not fit the task; when resolved; then the config field is named
    with pytest.raises(ConfigError, match=f"gates.quality.metric: '{configured}' is not a {task} metric"):
        metric_name(task, configured)


def test_higher_is_better_directions():
    # Given each metric; when asked its direction; then error metrics are lower-is-better
    assert [higher_is_better(m) for m in ("roc_auc", "accuracy", "f1", "r2")] == [True] * 4
    assert [higher_is_better(m) for m in ("rmse", "mae")] == [False, False]
    with pytest.raises(ValueError, match="unknown metric"):
        higher_is_better("mape")


@pytest.fixture(scope="module")
def breast_cancer_predictions(breast_frame):
    train, holdout = train_test_split(breast_frame, test_size=0.25, random_state=42)
    features = tuple(FeatureSpec(name=c, dtype="string" if c == "size_band" else "float") for c in train.columns[:-1])
    schema = ModelSchema(task="classification", features=features, target="malignant", classes=(0, 1))
    model = breast_cancer.build_model({"max_iter": 30}).fit(train[schema.feature_names], train["malignant"])
    return holdout["malignant"].to_numpy(), predict_native(model, holdout, schema)


def test_binary_scores_match_sklearn(breast_cancer_predictions):
    # Given the example classifier's holdout predictions
    truth, predictions = breast_cancer_predictions

    # When scored
    auc = score("roc_auc", "classification", truth, predictions, (0, 1))
    f1 = score("f1", "classification", truth, predictions, (0, 1))
    accuracy = score("accuracy", "classification", truth, predictions, (0, 1))

    # Then the numbers are sklearn's with malignant (class 1) as the positive class, and the model is good
    assert auc == pytest.approx(roc_auc_score(truth, predictions.scores[:, 1]))
    assert f1 == pytest.approx(f1_score(truth, predictions.labels))
    assert accuracy == pytest.approx(float(np.mean(truth == predictions.labels)))
    assert auc > 0.95 and accuracy > 0.9


def test_multiclass_scores_use_ovr_auc_and_macro_f1():
    # Given a three-class classifier (iris, bundled with scikit-learn)
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x[::2], y[::2])
    truth = y[1::2]
    predictions = Predictions(labels=model.predict(x[1::2]), scores=model.predict_proba(x[1::2]))

    # When scored
    auc = score("roc_auc", "classification", truth, predictions, (0, 1, 2))
    f1 = score("f1", "classification", truth, predictions, (0, 1, 2))

    # Then roc_auc is one-vs-rest and f1 is macro-averaged
    assert auc == pytest.approx(roc_auc_score(truth, predictions.scores, multi_class="ovr"))
    assert f1 == pytest.approx(f1_score(truth, predictions.labels, average="macro"))


def test_regression_scores_match_sklearn(diabetes_frame):
    # Given the example regressor's holdout predictions
    train, holdout = train_test_split(diabetes_frame, test_size=0.25, random_state=42)
    features = [c for c in train.columns if c != "progression"]
    model = diabetes.build_model({"n_estimators": 20}).fit(train[features], train["progression"])
    values = model.predict(holdout[features])
    predictions = Predictions(labels=values, scores=values)
    truth = holdout["progression"]

    # When scored with each regression metric
    scores = {m: score(m, "regression", truth, predictions, None) for m in ("rmse", "mae", "r2", "auto")}

    # Then they are sklearn's numbers and auto means rmse
    assert scores["rmse"] == pytest.approx(math.sqrt(mean_squared_error(truth, values)))
    assert scores["mae"] == pytest.approx(mean_absolute_error(truth, values))
    assert scores["r2"] == pytest.approx(r2_score(truth, values))
    assert scores["auto"] == scores["rmse"]


def test_score_refuses_labels_that_are_not_model_classes(breast_cancer_predictions):
    # Given integer labels but classes recorded as strings (a common 1 vs "1" mix-up)
    truth, predictions = breast_cancer_predictions

    # When scored; then it raises instead of silently scoring every row as wrong
    with pytest.raises(ValueError, match="not model classes"):
        score("accuracy", "classification", truth, predictions, ("0", "1"))


def test_score_refuses_length_mismatch(breast_cancer_predictions):
    # Given fewer true labels than predictions; when scored; then it raises with both counts
    truth, predictions = breast_cancer_predictions
    with pytest.raises(ValueError, match=f"{len(truth) - 1} true values but {len(truth)} predictions"):
        score("roc_auc", "classification", truth[1:], predictions, (0, 1))


# --- quality against the champion -----------------------------------------------------------------------------


def test_no_champion_passes():
    # Given a first release; when checked; then it passes and says why
    check = quality_check("roc_auc", 0.97, None, None, QualityGate())
    assert check.passed
    assert check.detail == "no champion yet"
    assert check.measured == {"metric": "roc_auc", "candidate": 0.97}


def test_quality_worse_than_champion_fails_with_both_numbers():
    # Given a candidate AUC of 0.91 against champion v3 at 0.95
    check = quality_check("roc_auc", 0.91, 0.95, "3", QualityGate())

    # Then it fails and the check carries both values, the champion version and the delta
    assert not check.passed
    assert check.measured["candidate"] == 0.91
    assert check.measured["champion"] == 0.95
    assert check.measured["champion_version"] == "3"
    assert check.measured["delta"] == pytest.approx(-0.04)
    assert "roc_auc 0.91 vs champion v3 0.95" in check.detail


def test_quality_better_than_champion_passes():
    # Given a candidate that beats the champion; when checked; then it passes with a positive improvement
    check = quality_check("accuracy", 0.96, 0.95, "3", QualityGate())
    assert check.passed
    assert check.measured["improvement"] == pytest.approx(0.01)


def test_quality_must_beat_champion_by_min_improvement():
    # Given a 0.001 gain where 0.01 is required; when checked; then it fails
    check = quality_check("roc_auc", 0.951, 0.95, "3", QualityGate(min_improvement=0.01))
    assert not check.passed
    assert check.limits["min_improvement"] == 0.01


def test_negative_min_improvement_allows_a_small_drop():
    # Given a 0.005 drop where -0.01 is allowed; when checked; then it passes
    assert quality_check("roc_auc", 0.945, 0.95, "3", QualityGate(min_improvement=-0.01)).passed


def test_lower_is_better_metric_compares_the_other_way():
    # Given rmse, where lower is better; when a lower and a higher candidate are checked
    better = quality_check("rmse", 50.0, 55.0, "2", QualityGate())
    worse = quality_check("rmse", 60.0, 55.0, "2", QualityGate())

    # Then the lower one passes with a positive improvement and the higher one fails
    assert better.passed and better.measured["improvement"] == pytest.approx(5.0)
    assert not worse.passed and worse.measured["improvement"] == pytest.approx(-5.0)


def test_min_value_floor_fails_even_without_champion():
    # Given a first release with AUC 0.6 below the 0.8 floor; when checked; then it fails naming the floor
    check = quality_check("roc_auc", 0.6, None, None, QualityGate(min_value=0.8))
    assert not check.passed
    assert "below the floor min_value 0.8" in check.detail
    assert check.limits["min_value"] == 0.8


def test_min_value_is_not_applied_to_lower_is_better_metrics():
    # Given a min_value with rmse; when checked; then it is not enforced and the detail says so
    check = quality_check("rmse", 50.0, None, None, QualityGate(min_value=100.0))
    assert check.passed
    assert "min_value not applied: rmse is lower-is-better" in check.detail
    assert "min_value" not in check.limits


def test_non_finite_candidate_fails():
    # Given a NaN metric (e.g. a broken evaluation); when checked; then it fails rather than passing
    assert not quality_check("roc_auc", float("nan"), None, None, QualityGate()).passed


# --- latency --------------------------------------------------------------------------------------------------


def test_latency_within_budget_passes():
    # Given p99 1.2 ms under a 5 ms budget; when checked; then it passes with p50 and p99
    check = latency_check(Timing(p50_ms=0.4, p99_ms=1.2, batch_rows_per_s=90_000), LatencyGate(p99_ms=5.0))
    assert check.passed
    assert check.measured == {"p50_ms": 0.4, "p99_ms": 1.2}
    assert check.limits == {"p99_ms": 5.0}


def test_latency_over_budget_fails():
    # Given p99 7.5 ms over a 5 ms budget; when checked; then it fails with both numbers in the detail
    check = latency_check(Timing(p50_ms=2.0, p99_ms=7.5, batch_rows_per_s=9_000), LatencyGate(p99_ms=5.0))
    assert not check.passed
    assert check.detail == "single-row p99 7.5 ms is over the 5 ms budget"


# --- report ---------------------------------------------------------------------------------------------------


def test_gate_report_fails_when_any_check_fails():
    # Given one passing and one failing check; when collected; then the report fails listing the failed one
    ok = Check(name="parity", passed=True)
    bad = Check(name="latency", passed=False, measured={"p99_ms": 9.0})
    report = gate_report("breast-cancer-classifier", "4", [ok, bad])
    assert not report.passed
    assert report.failed == (bad,)


def test_write_report_round_trips_json_named_by_model_and_version(tmp_path):
    # Given a report for a model name with a slash
    checks = [latency_check(Timing(p50_ms=0.4, p99_ms=1.2, batch_rows_per_s=1.0), LatencyGate())]
    report = gate_report("team/breast-cancer", "12", checks)

    # When written to a folder that does not exist yet
    path = write_report(report, tmp_path / "reports")

    # Then the file name carries model and version, and the JSON reads back to the same report
    assert path == tmp_path / "reports" / "gate-team_breast-cancer-v12.json"
    assert GateReport.model_validate_json(path.read_text()) == report
    assert json.loads(path.read_text())["checks"][0]["name"] == "latency"
