"""Frozen results that tasks return and flows branch on. Decisions are data: each can be logged and read back."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


FeatureType = Literal["float", "int", "string", "bool"]
Task = Literal["classification", "regression"]


class FeatureSpec(Result):
    """One model input column: its name (also the ONNX input name) and its type."""

    name: str
    dtype: FeatureType


class ModelSchema(Result):
    """What the model takes and returns; stored with the ONNX model and used to type the serving API."""

    task: Task
    features: tuple[FeatureSpec, ...]
    target: str
    classes: tuple[str | int | float, ...] | None = None

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


class DatasetSplit(Result):
    """Where the split data lives on disk (Parquet), with its fingerprint."""

    train_path: Path
    holdout_path: Path
    reference_path: Path
    fingerprint: str
    rows: int
    columns: tuple[str, ...]


class TrainedModel(Result):
    run_id: str
    model_uri: str
    metrics: dict[str, float]
    data_fingerprint: str


class RegisteredVersion(Result):
    name: str
    version: str
    run_id: str
    source: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class OnnxModel(Result):
    """A converted ONNX file and its stable output names."""

    path: Path
    schema_: ModelSchema = Field(alias="schema")
    label_output: str
    score_output: str
    opset: int
    size_bytes: int

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


Precision = Literal["fp32", "int8"]


class Candidate(Result):
    """One optimized variant of the converted model."""

    name: str
    path: Path
    precision: Precision
    size_bytes: int


class Timing(Result):
    """In-process ONNX Runtime timing of one candidate."""

    p50_ms: float
    p99_ms: float
    batch_rows_per_s: float


class Parity(Result):
    """How far the ONNX outputs are from the native model on the same rows."""

    rows: int
    max_abs_diff: float
    label_flip_rate: float
    max_abs_diff_allowed: float
    label_flip_rate_allowed: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.max_abs_diff_allowed and self.label_flip_rate <= self.label_flip_rate_allowed


class CandidateReport(Result):
    candidate: Candidate
    timing: Timing | None
    parity: Parity | None
    kept: bool
    reason: str


class Optimization(Result):
    chosen: Candidate
    chosen_timing: Timing
    chosen_parity: Parity
    baseline_timing: Timing
    reports: tuple[CandidateReport, ...]

    @property
    def speedup(self) -> float:
        return self.baseline_timing.p50_ms / self.chosen_timing.p50_ms if self.chosen_timing.p50_ms else 1.0


class Check(Result):
    """One gate check with the numbers behind its verdict."""

    name: str
    passed: bool
    measured: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)
    detail: str = ""

    def line(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        nums = ", ".join(f"{k}={_fmt(v)}" for k, v in self.measured.items())
        lims = ", ".join(f"{k}={_fmt(v)}" for k, v in self.limits.items())
        return (
            f"[{status}] {self.name}: {nums}"
            + (f" (limits: {lims})" if lims else "")
            + (f" - {self.detail}" if self.detail else "")
        )


class GateReport(Result):
    model_name: str
    version: str
    checks: tuple[Check, ...]
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def to_markdown(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        rows = [
            f"# Gate report: {self.model_name} v{self.version} - {verdict}",
            "",
            "| check | result | measured | limits | detail |",
            "|---|---|---|---|---|",
        ]
        for c in self.checks:
            measured = "<br>".join(f"{k}: {_fmt(v)}" for k, v in c.measured.items())
            limits = "<br>".join(f"{k}: {_fmt(v)}" for k, v in c.limits.items())
            rows.append(f"| {c.name} | {'pass' if c.passed else '**FAIL**'} | {measured} | {limits} | {c.detail} |")
        return "\n".join(rows) + "\n"


class PromotionDecision(Result):
    move_challenger: bool
    move_champion: bool
    reason: str


class AliasMove(Result):
    alias: str
    from_version: str | None
    to_version: str


HistoryAction = Literal["release", "promote", "rollback", "manual", "restore"]


class HistoryEntry(Result):
    """One all-or-nothing alias move, as recorded in the promotion history."""

    id: str
    at: datetime
    model_name: str
    action: HistoryAction
    actor: str
    reason: str
    moves: tuple[AliasMove, ...]
    status: Literal["pending", "done", "aborted"] = "done"


class BentoRef(Result):
    tag: str
    model_tag: str
    path: Path


class ReleaseSummary(Result):
    """What a release did, printed at its end and returned by the flow."""

    model_name: str
    version: str
    run_id: str
    tracking_uri: str
    onnx_variant: str
    onnx_size_bytes: int
    speedup: float
    gate_report_path: Path
    gate_passed: bool
    checks: tuple[Check, ...]
    bento_tag: str | None
    aliases: dict[str, str]
    promotion: PromotionDecision | None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
