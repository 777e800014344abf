"""Release gates as data: the Great Expectations suite, ONNX parity, quality against the champion, latency.

Each check returns a `Check` with the numbers behind its verdict; `gate_report` collects them. Great
Expectations takes seconds to import, so it is imported only inside the functions that run it.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import Field, ValidationError

from configs.loader import ConfigError
from configs.settings import LatencyGate, QualityGate
from tasks.types import Check, GateReport, ModelSchema, Parity, Result, Task, Timing

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations.core import ExpectationSuiteValidationResult, ExpectationValidationResult
    from great_expectations.expectations import Expectation

    from tasks.predict import Predictions

CLASSIFICATION_METRICS = ("roc_auc", "accuracy", "f1")
REGRESSION_METRICS = ("rmse", "mae", "r2")
_HIGHER_IS_BETTER = {"roc_auc": True, "accuracy": True, "f1": True, "r2": True, "rmse": False, "mae": False}
_SHOWN_FAILURES = 5  # failures spelled out in a Check's detail; all of them stay in `measured`


# --- data quality: a Great Expectations suite kept as data --------------------------------------------------


class ExpectationSpec(Result):
    """One expectation: its Great Expectations type in snake_case and the keyword arguments of its class."""

    type: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


class SuiteSpec(Result):
    """An expectation suite as read from configs/expectations/<name>.yaml."""

    name: str = Field(min_length=1)
    description: str = ""
    expectations: tuple[ExpectationSpec, ...] = Field(min_length=1)


def load_suite(path: Path) -> SuiteSpec:
    """Read a suite file and build every entry with its GX class; ConfigError names the file and each bad entry."""
    data = _read_suite_file(path)
    try:
        suite = SuiteSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([f"{path}: {_dotted(e['loc'])}: {e['msg'].lower()}" for e in exc.errors()]) from None
    problems = []
    for index, spec in enumerate(suite.expectations):
        try:
            _build_expectation(spec)
        except ValueError as exc:
            problems.append(f"{path}: expectations[{index}] ({spec.type}): {exc}")
    if problems:
        raise ConfigError(problems)
    return suite


def run_suite(suite: SuiteSpec, frame: pd.DataFrame) -> Check:
    """Validate `frame` with an in-memory GX context; a failure names the column and the unexpected count."""
    result = _validate_with_gx(suite, frame)
    failures = [_describe_failure(r) for r in result.results if not r.success]
    total = len(result.results)
    measured: dict[str, Any] = {
        "suite": suite.name,
        "rows": len(frame),
        "expectations": total,
        "failed": len(failures),
        "failed_expectations": failures,
    }
    if failures:
        shown = "; ".join(failures[:_SHOWN_FAILURES])
        more = f"; and {len(failures) - _SHOWN_FAILURES} more" if len(failures) > _SHOWN_FAILURES else ""
        detail = f"{len(failures)} of {total} expectations of suite {suite.name!r} failed: {shown}{more}"
    else:
        detail = f"all {total} expectations of suite {suite.name!r} hold on {len(frame)} rows"
    passed = bool(result.success) and not failures
    return Check(name="data_quality", passed=passed, measured=measured, detail=detail)


def _read_suite_file(path: Path) -> Any:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError([f"{path}: expectation suite file not found"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: top level must be a mapping with `name` and `expectations`"])
    return data


def _dotted(loc: Sequence[str | int]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".") or "<root>"


@functools.cache
def _expectation_classes() -> dict[str, type[Expectation]]:
    """GX expectation classes by their snake_case type, e.g. expect_column_values_to_be_between."""
    import great_expectations as gx
    from great_expectations.expectations import Expectation

    classes = (getattr(gx.expectations, name) for name in dir(gx.expectations))
    return {
        cls.expectation_type: cls
        for cls in classes
        if isinstance(cls, type) and issubclass(cls, Expectation) and getattr(cls, "expectation_type", None)
    }


def _build_expectation(spec: ExpectationSpec) -> Expectation:
    """The GX expectation for one entry; ValueError says what is wrong with its type or kwargs."""
    classes = _expectation_classes()
    cls = classes.get(spec.type)
    if cls is None:
        close = difflib.get_close_matches(spec.type, classes, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown expectation type {spec.type!r}{hint}")
    try:
        return cls(**spec.kwargs)
    except TypeError as exc:
        raise ValueError(f"bad kwargs: {exc}") from None
    except ValueError as exc:  # GX validates kwargs with pydantic v1; its ValidationError is a ValueError
        raise ValueError(f"bad kwargs: {_pydantic_v1_errors(exc)}") from None


def _pydantic_v1_errors(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    first_by_field: dict[str, str] = {}
    for error in errors():
        field = ".".join(str(part) for part in error.get("loc", ())) or "<root>"
        first_by_field.setdefault(field, str(error.get("msg", "")))
    return "; ".join(f"{field}: {msg}" for field, msg in first_by_field.items())


def _validate_with_gx(suite: SuiteSpec, frame: pd.DataFrame) -> ExpectationSuiteValidationResult:
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    expectations = []
    for index, spec in enumerate(suite.expectations):
        try:
            expectations.append(_build_expectation(spec))
        except ValueError as exc:
            raise ConfigError([f"suite {suite.name!r}: expectations[{index}] ({spec.type}): {exc}"]) from None
    config = DataContextConfig(
        # No data docs site: the default ephemeral config creates a temporary folder for one.
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        # Without this, tqdm draws "Calculating Metrics" bars on stderr for every validation.
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    batch_definition = (
        context.data_sources.add_pandas(name="slipway")
        .add_dataframe_asset(name=suite.name)
        .add_batch_definition_whole_dataframe(name="all_rows")
    )
    gx_suite = context.suites.add(gx.ExpectationSuite(name=suite.name, expectations=expectations))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite.name}_gate", data=batch_definition, suite=gx_suite)
    )
    return definition.run(batch_parameters={"dataframe": frame})


def _describe_failure(result: ExpectationValidationResult) -> str:
    """One line per failed expectation: type(column), then the error, unexpected count/percent or observed value."""
    config = result.expectation_config
    kwargs = dict(config.kwargs) if config is not None else {}
    kind = config.type if config is not None else "expectation"
    columns = kwargs.get("column") or ", ".join(kwargs.get("column_list") or ())
    label = f"{kind}({columns})" if columns else kind
    expected = _expected(kwargs)
    error = _exception_message(result.exception_info)
    if error:
        return f"{label}: error: {error}"
    res = result.result or {}
    if res.get("unexpected_count") is not None:
        percent = res.get("unexpected_percent")
        share = f" ({percent:.2f}%)" if percent is not None else ""
        values = [v for v in res.get("partial_unexpected_list") or () if v is not None and v == v]  # not NaN
        sample = list(dict.fromkeys(values))[:5]
        examples = f", e.g. {_short(sample)}" if sample else ""
        return f"{label}: {res['unexpected_count']} unexpected of {res.get('element_count')}{share}{examples}{expected}"
    mismatched = (res.get("details") or {}).get("mismatched")
    if isinstance(mismatched, dict):
        parts = [f"{key} {_short(value)}" for key, value in mismatched.items() if value]
        return f"{label}: " + ", ".join(parts)
    return f"{label}: observed {_short(res.get('observed_value'))}{expected}"


def _exception_message(info: Any) -> str:
    """GX nests exception info per metric when a metric fails, or keeps it flat for the expectation itself."""
    if not isinstance(info, dict):
        return ""
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "raised an exception").removeprefix("Error: ")
    nested = (_exception_message(value) for value in info.values() if isinstance(value, dict))
    return next((message for message in nested if message), "")


def _expected(kwargs: dict[str, Any]) -> str:
    keys = ("min_value", "max_value", "value", "value_set")
    shown = [f"{key}={_short(kwargs[key])}" for key in keys if kwargs.get(key) is not None]
    return f"; expected {', '.join(shown)}" if shown else ""


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- ONNX parity ------------------------------------------------------------------------------------------


def parity_check(parity: Parity, variant: str) -> Check:
    """The ONNX variant must match the native model within the parity limits, on at least one row."""
    problems = []
    if parity.rows == 0:
        problems.append("no rows were compared")
    if not parity.max_abs_diff <= parity.max_abs_diff_allowed:
        problems.append(f"max |onnx - native| {parity.max_abs_diff:.3g} > {parity.max_abs_diff_allowed:.3g}")
    if not parity.label_flip_rate <= parity.label_flip_rate_allowed:
        problems.append(f"label flip rate {parity.label_flip_rate:.3g} > {parity.label_flip_rate_allowed:.3g}")
    summary = "; ".join(problems) if problems else f"matches the native model on {parity.rows} rows"
    return Check(
        name="parity",
        passed=not problems,
        measured={
            "max_abs_diff": parity.max_abs_diff,
            "label_flip_rate": parity.label_flip_rate,
            "rows": parity.rows,
        },
        limits={"max_abs_diff": parity.max_abs_diff_allowed, "label_flip_rate": parity.label_flip_rate_allowed},
        detail=f"ONNX variant {variant!r}: {summary}",
    )


# --- quality against the champion --------------------------------------------------------------------------


def metric_name(task: Task, configured: str) -> str:
    """The gate metric: `auto` is roc_auc for classification and rmse for regression; others must fit the task."""
    allowed = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    if configured == "auto":
        return allowed[0]
    if configured not in allowed:
        raise ConfigError(
            [f"gates.quality.metric: {configured!r} is not a {task} metric; use auto or one of {', '.join(allowed)}"]
        )
    return configured


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of the metric means a better model."""
    try:
        return _HIGHER_IS_BETTER[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(_HIGHER_IS_BETTER)}") from None


def score(
    metric: str,
    task: Task,
    y_true: Sequence[Any] | np.ndarray | pd.Series,
    predictions: Predictions,
    classes: Sequence[str | int | float] | None,
) -> float:
    """The metric on true labels/values; for binary tasks the positive class is classes[1] (sklearn's order)."""
    metric = metric_name(task, metric)
    truth = np.asarray(y_true)
    if truth.shape[0] != predictions.labels.shape[0]:
        raise ValueError(f"{truth.shape[0]} true values but {predictions.labels.shape[0]} predictions")
    if task == "regression":
        return _regression_score(metric, truth, predictions.scores)
    if not classes:
        raise ValueError("scoring a classifier needs its classes (ModelSchema.classes)")
    _require_known_labels(truth, predictions.labels, classes)
    return _classification_score(metric, truth, predictions, list(classes))


def _regression_score(metric: str, truth: np.ndarray, values: np.ndarray) -> float:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    if metric == "rmse":
        return float(math.sqrt(mean_squared_error(truth, values)))
    if metric == "mae":
        return float(mean_absolute_error(truth, values))
    return float(r2_score(truth, values))


def _classification_score(metric: str, truth: np.ndarray, predictions: Predictions, classes: list[Any]) -> float:
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    binary = len(classes) == 2
    if metric == "accuracy":
        return float(accuracy_score(truth, predictions.labels))
    if metric == "f1":
        if binary:
            return float(f1_score(truth, predictions.labels, pos_label=classes[1]))
        return float(f1_score(truth, predictions.labels, labels=classes, average="macro"))
    scores = predictions.scores
    if binary:
        positive = scores[:, 1] if scores.ndim == 2 else scores
        return float(roc_auc_score(truth == classes[1], positive))
    return float(roc_auc_score(truth, scores, multi_class="ovr", labels=classes))


def _require_known_labels(truth: np.ndarray, predicted: np.ndarray, classes: Sequence[Any]) -> None:
    """A label the model does not know (often 1 vs "1") would silently score as wrong; refuse it instead."""
    known = set(classes)
    for where, values in (("y_true", truth), ("predictions", predicted)):
        unknown = set(values.tolist()) - known
        if unknown:
            raise ValueError(f"{where} has labels {sorted(map(repr, unknown))} that are not model classes {classes}")


def quality_check(
    metric: str,
    candidate_value: float,
    champion_value: float | None,
    champion_version: str | None,
    gate: QualityGate,
) -> Check:
    """Beat the champion by gate.min_improvement in the metric's good direction, and stay above gate.min_value."""
    # min_value is a floor, so it only applies to higher-is-better metrics; for rmse/mae the detail says it was skipped.
    better_up = higher_is_better(metric)
    problems: list[str] = []
    notes: list[str] = []
    limits: dict[str, Any] = {"min_improvement": gate.min_improvement}
    measured: dict[str, Any] = {"metric": metric, "candidate": candidate_value}
    if not math.isfinite(candidate_value):
        problems.append(f"candidate {metric} is {candidate_value}")
    if gate.min_value is not None and better_up:
        limits["min_value"] = gate.min_value
        if not candidate_value >= gate.min_value:
            problems.append(f"{metric} {candidate_value:.6g} is below the floor min_value {gate.min_value:.6g}")
    elif gate.min_value is not None:
        notes.append(f"min_value not applied: {metric} is lower-is-better")
    if champion_value is None:
        notes.insert(0, "no champion yet")
    else:
        delta = candidate_value - champion_value
        improvement = delta if better_up else -delta
        measured |= {
            "champion": champion_value,
            "champion_version": champion_version,
            "delta": delta,
            "improvement": improvement,
        }
        verdict = (
            f"{metric} {candidate_value:.6g} vs champion v{champion_version} {champion_value:.6g} "
            f"(improvement {improvement:+.6g}, needed >= {gate.min_improvement:+.6g})"
        )
        (notes if improvement >= gate.min_improvement else problems).append(verdict)
    detail = "; ".join(problems + notes)
    return Check(name="quality", passed=not problems, measured=measured, limits=limits, detail=detail)


# --- latency ------------------------------------------------------------------------------------------------


def latency_check(timing: Timing, gate: LatencyGate) -> Check:
    """In-process single-row p99 latency of the ONNX model must stay within gate.p99_ms."""
    passed = timing.p99_ms <= gate.p99_ms
    relation = "within" if passed else "over"
    return Check(
        name="latency",
        passed=passed,
        measured={"p50_ms": timing.p50_ms, "p99_ms": timing.p99_ms},
        limits={"p99_ms": gate.p99_ms},
        detail=f"single-row p99 {timing.p99_ms:.3g} ms is {relation} the {gate.p99_ms:.3g} ms budget",
    )


# --- report -------------------------------------------------------------------------------------------------


def gate_report(model_name: str, version: str, checks: Sequence[Check]) -> GateReport:
    """Collect the checks of one model version into its gate report."""
    return GateReport(model_name=model_name, version=version, checks=tuple(checks))


def write_report(report: GateReport, out_dir: Path) -> Path:
    """Write the report as JSON to out_dir/gate-<model>-v<version>.json (replacing an earlier run's) and return it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"gate-{_safe(report.model_name)}-v{_safe(report.version)}.json"
    path.write_text(report.model_dump_json(indent=2))
    return path


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", part)


def holdout_metrics(model: Any, holdout: pd.DataFrame, schema: ModelSchema) -> dict[str, float]:
    """The task's standard metrics of a native model on the holdout, logged with the training run."""
    from tasks.predict import predict_native

    predictions = predict_native(model, holdout, schema)
    names = CLASSIFICATION_METRICS if schema.task == "classification" else REGRESSION_METRICS
    truth = holdout[schema.target].to_numpy()
    return {name: score(name, schema.task, truth, predictions, schema.classes) for name in names}


def compare_with_champion(
    candidate: Any,
    champion: tuple[str, Any] | None,
    holdout: pd.DataFrame,
    schema: ModelSchema,
    gate: QualityGate,
) -> Check:
    """Score the candidate and the current champion on the same holdout and apply the quality gate."""
    from tasks.predict import predict_native

    metric = metric_name(schema.task, gate.metric)
    truth = holdout[schema.target].to_numpy()
    candidate_value = score(metric, schema.task, truth, predict_native(candidate, holdout, schema), schema.classes)
    if champion is None:
        return quality_check(metric, candidate_value, None, None, gate)
    champion_version, champion_model = champion
    champion_value = score(metric, schema.task, truth, predict_native(champion_model, holdout, schema), schema.classes)
    return quality_check(metric, candidate_value, champion_value, champion_version, gate)


# Prefect tasks: the same functions as steps the flows run (visible, timed and retried by Prefect).
validate_data = task(name="validate-data", cache_policy=NO_CACHE)(run_suite)
validate_quality = task(name="validate-quality", cache_policy=NO_CACHE)(compare_with_champion)
evaluate_holdout = task(name="evaluate-holdout", cache_policy=NO_CACHE)(holdout_metrics)
