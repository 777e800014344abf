"""The floor: the same model and rows through in-process ONNX Runtime, no HTTP, no JSON.

The session is opened as slipway's serving opens it (serving.predictor.open_session: one intra/inter-op
thread), and the feeds are built once with serving.features.feeds_from_columns, so only `session.run` is timed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from bench.model import LABEL, PROBABILITIES, BenchModel


@dataclass(frozen=True)
class FloorResult:
    """In-process timing of one batch size."""

    rows: int
    calls: int
    seconds: float
    calls_per_s: float
    rows_per_s: float
    p50_ms: float
    p99_ms: float


def measure_floor(model: BenchModel, rows: int, seconds: float, warmup_calls: int = 50) -> FloorResult:
    """Call session.run on a `rows`-row batch for about `seconds` (after a warmup) and time each call."""
    from serving.features import feeds_from_columns
    from serving.predictor import open_session

    session = open_session(model.onnx_path)
    feeds = feeds_from_columns(model.features, model.batch(rows))
    outputs = [LABEL, PROBABILITIES]
    for _ in range(warmup_calls):
        session.run(outputs, feeds)
    elapsed: list[int] = []
    deadline = time.perf_counter_ns() + int(seconds * 1e9)
    started = time.perf_counter_ns()
    while time.perf_counter_ns() < deadline:
        before = time.perf_counter_ns()
        session.run(outputs, feeds)
        elapsed.append(time.perf_counter_ns() - before)
    total_s = (time.perf_counter_ns() - started) / 1e9
    samples_ms = np.asarray(elapsed, dtype=np.float64) / 1e6
    return FloorResult(
        rows=rows,
        calls=len(elapsed),
        seconds=total_s,
        calls_per_s=len(elapsed) / total_s,
        rows_per_s=len(elapsed) * rows / total_s,
        p50_ms=float(np.percentile(samples_ms, 50)),
        p99_ms=float(np.percentile(samples_ms, 99)),
    )
