"""Build optimized variants of a converted ONNX model, time them, check their parity and choose one.

Variants: `fp32-base` (the converted file), `fp32-ort` (ONNX Runtime's extended graph optimizations saved
offline) and, for graphs with MatMul/Gemm (neural models), `int8-dynamic` (dynamic weight quantization).
Parity is measured against the native model on the rows as they are (float64, as clients send them). A variant
replaces fp32-base only if its outputs still match and it is clearly faster (MIN_GAIN_OVER_BASE).
"fp32" names the model's float32 weights and outputs; its numeric inputs are float64 (serving/features.py).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidGraph
from prefect import task
from prefect.cache_policies import NO_CACHE

from configs.settings import OptimizeSettings, ParityGate
from serving.features import feeds_from_columns
from tasks.errors import DataSourceError
from tasks.predict import Predictions, measure_parity, open_session, predict_native, predict_onnx
from tasks.types import Candidate, CandidateReport, ModelSchema, OnnxModel, Optimization, Parity, Result, Timing

BASE = "fp32-base"
ORT_OPTIMIZED = "fp32-ort"
INT8_DYNAMIC = "int8-dynamic"
QUANTIZABLE_OPS = frozenset({"MatMul", "Gemm"})
QUANTIZED_OPS = frozenset({"MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul", "MatMulIntegerToFloat"})
WARMUP_CALLS = 20
BATCH_CALLS = 10
# A variant replaces fp32-base only if its single-row p50 is at least this much lower. Equivalent variants (a tree
# ensemble's fp32-ort is the same graph) differ by timing noise only, and a choice made on noise flips between
# runs of the same model and ships a rewritten file for nothing.
MIN_GAIN_OVER_BASE = 0.10
# What quantization may raise on a graph it cannot handle. ORT's own errors derive from Exception directly.
_QUANTIZATION_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    RuntimeError,
    TypeError,
    KeyError,
    IndexError,
    AssertionError,
    NotImplementedError,
    onnx.checker.ValidationError,
    Fail,
    InvalidGraph,
    InvalidArgument,
)


class CandidateSet(Result):
    """The variants that were built, and those that were wanted but skipped (each with its reason)."""

    built: tuple[Candidate, ...]
    skipped: tuple[CandidateReport, ...] = ()


def native_predictions(model: Any, frame: pd.DataFrame, schema: ModelSchema) -> Predictions:
    """The native model's outputs that parity is measured against: on the rows as they are, which is also what
    the ONNX model is fed (numbers as float64), so any difference is the conversion's."""
    return predict_native(model, frame, schema)


def build_candidates(
    onnx_model: OnnxModel, workdir: Path, quantize: Literal["auto", "never", "always"]
) -> CandidateSet:
    """The base file, an offline ORT-optimized copy and (if it applies) a dynamic-int8 copy."""
    workdir.mkdir(parents=True, exist_ok=True)
    built = [
        _candidate(BASE, onnx_model.path, "fp32"),
        _candidate(ORT_OPTIMIZED, save_ort_optimized(onnx_model.path, workdir / "model.ort-extended.onnx"), "fp32"),
    ]
    if quantize == "never":
        return CandidateSet(built=tuple(built))
    int8_path = workdir / "model.int8-dynamic.onnx"
    if quantize == "auto" and not has_quantizable_ops(onnx_model.path):
        reason = "no MatMul/Gemm nodes: dynamic quantization does not apply (e.g. tree ensembles)"
        return CandidateSet(built=tuple(built), skipped=(_skipped(int8_path, reason),))
    problem = quantize_int8_dynamic(onnx_model.path, int8_path)
    if problem:
        return CandidateSet(built=tuple(built), skipped=(_skipped(int8_path, problem),))
    return CandidateSet(built=(*built, _candidate(INT8_DYNAMIC, int8_path, "int8")))


def save_ort_optimized(source: Path, target: Path) -> Path:
    """Save ORT's graph-optimized model to `target` (offline mode) and return its path.

    ORT_ENABLE_EXTENDED, not ENABLE_ALL: the layout optimizations of ENABLE_ALL can write hardware-specific
    nodes into the saved file, which then only runs on a machine like the one that built it.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return target


def has_quantizable_ops(path: Path) -> bool:
    """True when the graph has MatMul/Gemm nodes, the ops dynamic quantization rewrites."""
    return any(node.op_type in QUANTIZABLE_OPS for node in onnx.load(str(path)).graph.node)


def quantize_int8_dynamic(source: Path, target: Path) -> str | None:
    """Write a dynamic-int8 copy of `source` to `target`; return why not when it cannot be done, else None."""
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    prepared = target.with_name(target.stem + ".pre.onnx")
    try:
        # skl2onnx graphs need ORT's pre-processing without symbolic shape inference, and a default tensor
        # type for tensors whose type the quantizer cannot infer.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(
            str(prepared),
            str(target),
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        open_session(target)
    except _QUANTIZATION_ERRORS as exc:
        target.unlink(missing_ok=True)
        return f"quantization failed: {type(exc).__name__}: {str(exc)[:300]}"
    finally:
        prepared.unlink(missing_ok=True)
    if not any(node.op_type in QUANTIZED_OPS for node in onnx.load(str(target)).graph.node):
        target.unlink(missing_ok=True)
        return "quantization changed nothing: the graph has no MatMul/Gemm weights to quantize"
    return None


def time_candidate(
    path: Path, schema: ModelSchema, frame: pd.DataFrame, single_rows: int, batch_rows: int, intra_op_threads: int
) -> Timing:
    """In-process ORT latency of single-row calls (p50/p99 ms) and batch throughput (rows/s), after a warm-up."""
    if frame.empty:
        raise DataSourceError("cannot time a model on an empty frame")
    session = open_session(path, intra_op_threads)
    feeds = feeds_from_columns([(f.name, f.dtype) for f in schema.features], frame)
    rows = len(frame)
    singles = [{name: values[i : i + 1] for name, values in feeds.items()} for i in range(min(rows, single_rows))]
    run = _runner(session)
    for i in range(min(WARMUP_CALLS, single_rows)):
        run(singles[i % len(singles)])
    batch_index = np.arange(batch_rows) % rows
    batch = {name: values[batch_index] for name, values in feeds.items()}
    run(batch)
    with _gc_paused():
        single_ns = np.array(
            [_elapsed_ns(run, singles[i % len(singles)]) for i in range(single_rows)], dtype=np.float64
        )
        batch_ns = np.array([_elapsed_ns(run, batch) for _ in range(BATCH_CALLS)], dtype=np.float64)
    p50, p99 = np.percentile(single_ns, [50, 99]) / 1e6
    return Timing(
        p50_ms=float(p50), p99_ms=float(p99), batch_rows_per_s=float(batch_rows / (np.median(batch_ns) / 1e9))
    )


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's garbage collector while timing, as timeit does: a full collection triggered by the
    release process's own allocations stops every thread for milliseconds and is not the model's latency."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _runner(session: ort.InferenceSession) -> Callable[[dict[str, np.ndarray]], Any]:
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: session.run(names, feeds)


def _elapsed_ns(run: Callable[[dict[str, np.ndarray]], Any], feeds: dict[str, np.ndarray]) -> int:
    start = time.perf_counter_ns()
    run(feeds)
    return time.perf_counter_ns() - start


def evaluate_candidate(
    candidate: Candidate,
    onnx_model: OnnxModel,
    frame: pd.DataFrame,
    native: Predictions,
    parity: ParityGate,
    timing: OptimizeSettings,
) -> CandidateReport:
    """Measure a candidate's parity with the native model (fp32 or int8 bound) and time it; kept is decided later."""
    schema = onnx_model.schema_
    session = open_session(candidate.path, timing.intra_op_threads)
    outputs = predict_onnx(session, frame, schema, onnx_model.label_output, onnx_model.score_output)
    allowed = parity.max_abs_diff_quantized if candidate.precision == "int8" else parity.max_abs_diff_fp32
    measured = measure_parity(native, outputs, schema.task, allowed, parity.max_label_flip_rate)
    timed = time_candidate(
        candidate.path, schema, frame, timing.benchmark_rows, timing.batch_rows, timing.intra_op_threads
    )
    return CandidateReport(
        candidate=candidate, timing=timed, parity=measured, kept=False, reason=_parity_line(measured)
    )


def choose_candidate(reports: list[CandidateReport]) -> Optimization:
    """Keep fp32-base unless a variant that passed parity is at least MIN_GAIN_OVER_BASE faster (single-row p50);
    then the fastest such variant. fp32-base timing is the speedup baseline.

    If fp32-base failed parity, the fastest variant that passed is kept whatever its speed (its parity was measured
    on its own file). If none passed, nothing is kept (kept=False everywhere) and the unoptimized fp32-base is
    returned as `chosen`, so the parity gate fails on the conversion's own numbers rather than on an optimization's.
    Raises ValueError if fp32-base was not evaluated (a wiring bug, not a model problem).
    """
    baseline = next((r for r in reports if r.candidate.name == BASE and r.timing and r.parity), None)
    if baseline is None or baseline.timing is None or baseline.parity is None:
        raise ValueError(
            f"choose_candidate needs the evaluated {BASE!r} report; got {[r.candidate.name for r in reports]}"
        )
    passing = [r for r in reports if r.timing is not None and r.parity is not None and r.parity.passed]
    if baseline.parity.passed:
        fast_enough = baseline.timing.p50_ms * (1.0 - MIN_GAIN_OVER_BASE)
        passing = [r for r in passing if r is baseline or _p50(r) <= fast_enough]
    chosen = min(passing, key=_p50) if passing else baseline
    assert chosen.timing is not None and chosen.parity is not None
    decided = tuple(_decide(r, chosen, baseline, bool(passing)) for r in reports)
    return Optimization(
        chosen=chosen.candidate,
        chosen_timing=chosen.timing,
        chosen_parity=chosen.parity,
        baseline_timing=baseline.timing,
        reports=decided,
    )


def _p50(report: CandidateReport) -> float:
    return report.timing.p50_ms if report.timing else float("inf")


def optimization_tags(optimization: Optimization) -> dict[str, str]:
    """Registry tags describing the chosen variant, its timing and parity, and every candidate's verdict."""
    timing, parity = optimization.chosen_timing, optimization.chosen_parity
    tags = {
        "slipway.optimize.variant": optimization.chosen.name,
        "slipway.optimize.precision": optimization.chosen.precision,
        "slipway.optimize.size_bytes": str(optimization.chosen.size_bytes),
        "slipway.optimize.p50_ms": f"{timing.p50_ms:.4f}",
        "slipway.optimize.p99_ms": f"{timing.p99_ms:.4f}",
        "slipway.optimize.batch_rows_per_s": f"{timing.batch_rows_per_s:.1f}",
        "slipway.optimize.speedup": f"{optimization.speedup:.3f}",
        "slipway.parity.max_abs_diff": f"{parity.max_abs_diff:.6g}",
        "slipway.parity.label_flip_rate": f"{parity.label_flip_rate:.6g}",
        "slipway.parity.passed": str(parity.passed).lower(),
    }
    for report in optimization.reports:
        tags[f"slipway.optimize.candidate.{report.candidate.name}"] = ("kept: " if report.kept else "") + report.reason
    return tags


def _candidate(name: str, path: Path, precision: Literal["fp32", "int8"]) -> Candidate:
    return Candidate(name=name, path=path, precision=precision, size_bytes=path.stat().st_size)


def _skipped(path: Path, reason: str) -> CandidateReport:
    candidate = Candidate(name=INT8_DYNAMIC, path=path, precision="int8", size_bytes=0)
    return CandidateReport(candidate=candidate, timing=None, parity=None, kept=False, reason=f"skipped: {reason}")


def _parity_line(parity: Parity) -> str:
    verdict = "passed" if parity.passed else "FAILED"
    return (
        f"parity {verdict}: max_abs_diff={parity.max_abs_diff:.3g} (allowed {parity.max_abs_diff_allowed:.3g}), "
        f"label_flip_rate={parity.label_flip_rate:.3g} (allowed {parity.label_flip_rate_allowed:.3g})"
    )


def _decide(
    report: CandidateReport, chosen: CandidateReport, baseline: CandidateReport, any_passed: bool
) -> CandidateReport:
    """The report with its final verdict: kept, not clearly faster than fp32-base, slower, failed parity, or skipped."""
    if report.timing is None or report.parity is None:
        return report
    if not any_passed:
        return report.model_copy(update={"reason": f"{report.reason}; no candidate passed parity, none kept"})
    assert chosen.timing is not None and baseline.timing is not None
    p50, chosen_p50, base_p50 = report.timing.p50_ms, chosen.timing.p50_ms, baseline.timing.p50_ms
    if report.candidate.name == chosen.candidate.name:
        if chosen is baseline:
            why = f"chosen: {BASE}, no variant that passed parity is {MIN_GAIN_OVER_BASE:.0%} faster (p50 {p50:.3f} ms)"
        else:
            why = f"chosen: fastest that passed parity (p50 {p50:.3f} ms vs {base_p50:.3f} ms for {BASE})"
        return report.model_copy(update={"kept": True, "reason": f"{why}; {report.reason}"})
    if not report.parity.passed:
        return report
    if chosen is baseline and p50 <= base_p50:
        why = f"not {MIN_GAIN_OVER_BASE:.0%} faster than {BASE} (p50 {p50:.3f} vs {base_p50:.3f} ms)"
    else:
        why = f"slower than {chosen.candidate.name} (p50 {p50:.3f} vs {chosen_p50:.3f} ms)"
    return report.model_copy(update={"reason": f"{why}; {report.reason}"})


# Prefect tasks: the optimize stage as steps the release flow runs.
build = task(name="build-candidates", cache_policy=NO_CACHE)(build_candidates)
evaluate = task(name="evaluate-candidate", cache_policy=NO_CACHE)(evaluate_candidate)
