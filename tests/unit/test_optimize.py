"""Optimized variants, their timing and parity, and the choice between them, on real ONNX Runtime sessions.

Measured when written (2-core machine, 1 intra-op thread, release split of the breast-cancer example with float64
feeds, 500 single-row calls, batches of 100): fp32-base p50 ~0.066 ms / p99 ~0.15 ms / ~130-200k rows/s, fp32-ort
the same within noise (on this shared machine a run's p50 is sometimes ~0.13 ms for either variant, so which one
is faster flips between runs: hence MIN_GAIN_OVER_BASE); int8 does not apply to its trees. A numeric MLP
(30-64-32) gets an int8-dynamic variant ~3x smaller whose probabilities move by ~1e-2 (fails the 1e-4 bound).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from configs.settings import OptimizeSettings, ParityGate
from examples import breast_cancer
from tasks.convert import convert_to_onnx, infer_schema
from tasks.errors import DataSourceError
from tasks.optimize import (
    BASE,
    INT8_DYNAMIC,
    MIN_GAIN_OVER_BASE,
    ORT_OPTIMIZED,
    build_candidates,
    choose_candidate,
    evaluate_candidate,
    native_predictions,
    optimization_tags,
    time_candidate,
)
from tasks.train import split_data
from tasks.types import Candidate, CandidateReport, OnnxModel, Parity, Timing

FAST = OptimizeSettings(benchmark_rows=60, batch_rows=50, intra_op_threads=1)
STRICT = ParityGate(max_abs_diff_fp32=1e-4, max_abs_diff_quantized=1e-4, max_label_flip_rate=0.0)


@pytest.fixture(scope="module")
def tree_release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, OnnxModel, pd.DataFrame]:
    """The shipped breast-cancer example fitted and converted as a release would do it."""
    train, holdout = split_data(breast_cancer.load_data(), "malignant", 0.25, 42, stratify=True)
    model = breast_cancer.build_model({}).fit(train.drop(columns=["malignant"]), train["malignant"])
    schema = infer_schema(train, "malignant", "classification", model.classes_)
    path = tmp_path_factory.mktemp("tree") / "model.onnx"
    return model, convert_to_onnx(model, schema, path, 17, 3), holdout


@pytest.fixture(scope="module")
def mlp_release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, OnnxModel, pd.DataFrame]:
    """A small numeric MLP pipeline: the neural case where dynamic int8 quantization applies."""
    frame = load_breast_cancer(as_frame=True).frame.rename(columns=lambda c: c.replace(" ", "_"))
    model = Pipeline(
        [("scale", StandardScaler()), ("mlp", MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=300, random_state=0))]
    ).fit(frame.drop(columns=["target"]), frame["target"])
    schema = infer_schema(frame, "target", "classification", model.classes_)
    path = tmp_path_factory.mktemp("mlp") / "model.onnx"
    return model, convert_to_onnx(model, schema, path, 17, 3), frame


def _report(name: str, p50: float, passed: bool, precision: Any = "fp32") -> CandidateReport:
    candidate = Candidate(name=name, path=Path(f"/nowhere/{name}.onnx"), precision=precision, size_bytes=100)
    timing = Timing(p50_ms=p50, p99_ms=p50 * 2, batch_rows_per_s=1000.0 / p50)
    parity = Parity(
        rows=10,
        max_abs_diff=1e-6 if passed else 0.5,
        label_flip_rate=0.0,
        max_abs_diff_allowed=1e-4,
        label_flip_rate_allowed=0.0,
    )
    return CandidateReport(candidate=candidate, timing=timing, parity=parity, kept=False, reason="measured")


def test_tree_model_gets_base_and_ort_variants_and_int8_is_skipped_with_a_reason(
    tree_release: Any, tmp_path: Path
) -> None:
    # Given a converted tree ensemble and quantize=auto, when building candidates, then fp32-base is the
    # converted file, fp32-ort is a new file that ORT loads, and int8 is reported as skipped with the reason.
    _, onnx_model, _ = tree_release
    built = build_candidates(onnx_model, tmp_path, "auto")
    assert [c.name for c in built.built] == [BASE, ORT_OPTIMIZED]
    base, ort_variant = built.built
    assert base.path == onnx_model.path and base.size_bytes == onnx_model.size_bytes
    assert ort_variant.path.parent == tmp_path and ort_variant.size_bytes == ort_variant.path.stat().st_size
    assert [(r.candidate.name, r.kept, r.timing) for r in built.skipped] == [(INT8_DYNAMIC, False, None)]
    assert "MatMul/Gemm" in built.skipped[0].reason


def test_quantize_never_builds_no_int8_and_reports_nothing(tree_release: Any, tmp_path: Path) -> None:
    # Given quantize=never, when building, then only the two fp32 variants exist and nothing is reported skipped.
    built = build_candidates(tree_release[1], tmp_path, "never")
    assert [c.name for c in built.built] == [BASE, ORT_OPTIMIZED] and built.skipped == ()


def test_quantize_always_on_trees_is_skipped_not_failed(tree_release: Any, tmp_path: Path) -> None:
    # Given quantize=always on a tree graph (nothing to quantize), when building, then the release is not failed:
    # the int8 candidate is skipped with the reason and no half-written file is left behind.
    built = build_candidates(tree_release[1], tmp_path, "always")
    assert [c.name for c in built.built] == [BASE, ORT_OPTIMIZED]
    assert "changed nothing" in built.skipped[0].reason
    assert not built.skipped[0].candidate.path.exists()


def test_a_quantizer_error_becomes_a_skipped_candidate(
    mlp_release: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a quantizer that raises on this graph, when quantize=always, then the error's type and message
    # become the skip reason and the fp32 candidates are still built.
    import onnxruntime.quantization as quantization

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("unsupported initializer layout")

    monkeypatch.setattr(quantization, "quantize_dynamic", broken)
    built = build_candidates(mlp_release[1], tmp_path, "always")
    assert [c.name for c in built.built] == [BASE, ORT_OPTIMIZED]
    assert built.skipped[0].reason == "skipped: quantization failed: ValueError: unsupported initializer layout"


def test_the_saved_ort_graph_has_no_hardware_specific_layout_ops(mlp_release: Any, tmp_path: Path) -> None:
    # Given an MLP (where ORT fuses Gemm + activation), when fp32-ort is saved with the extended level,
    # then it may use ORT contrib ops but no NCHWc layout ops, which ENABLE_ALL could bake in for one CPU.
    built = build_candidates(mlp_release[1], tmp_path, "never")
    domains = {node.domain for node in onnx.load(str(built.built[1].path)).graph.node}
    assert "com.microsoft.nchwc" not in domains


def test_mlp_gets_an_int8_candidate_whose_parity_is_measured_and_a_failing_one_is_never_chosen(
    mlp_release: Any, tmp_path: Path
) -> None:
    # Given a numeric MLP and quantize=auto, when candidates are built, evaluated with a 1e-4 bound for every
    # precision and one is chosen, then int8-dynamic exists (smaller, with integer MatMuls), its parity is
    # measured against that bound, and whatever the timings, the chosen variant is one that passed.
    model, onnx_model, frame = mlp_release
    built = build_candidates(onnx_model, tmp_path, "auto")
    assert [c.name for c in built.built] == [BASE, ORT_OPTIMIZED, INT8_DYNAMIC] and built.skipped == ()
    int8 = built.built[2]
    assert int8.precision == "int8" and int8.size_bytes < built.built[0].size_bytes
    assert "MatMulInteger" in {n.op_type for n in onnx.load(str(int8.path)).graph.node}
    native = native_predictions(model, frame, onnx_model.schema_)
    reports = [evaluate_candidate(c, onnx_model, frame, native, STRICT, FAST) for c in built.built]
    by_name = {r.candidate.name: r for r in reports}
    int8_parity = by_name[INT8_DYNAMIC].parity
    assert int8_parity is not None and int8_parity.max_abs_diff_allowed == STRICT.max_abs_diff_quantized
    assert int8_parity.max_abs_diff > 0  # quantization really changed the outputs
    chosen = choose_candidate(reports)
    assert chosen.chosen_parity.passed
    for report in chosen.reports:
        assert report.kept == (report.candidate.name == chosen.chosen.name)
        if report.parity is not None and not report.parity.passed:
            assert report.candidate.name != chosen.chosen.name and "FAILED" in report.reason


def test_evaluate_candidate_uses_the_quantized_bound_only_for_int8(tree_release: Any, tmp_path: Path) -> None:
    # Given the fp32 candidates of the example, when evaluated, then parity uses the fp32 bound, passes on the
    # holdout, and the timing is filled in; nothing is kept before choose_candidate decides.
    model, onnx_model, holdout = tree_release
    native = native_predictions(model, holdout, onnx_model.schema_)
    gate = ParityGate(max_abs_diff_fp32=1e-4, max_abs_diff_quantized=1e-2)
    for candidate in build_candidates(onnx_model, tmp_path, "never").built:
        report = evaluate_candidate(candidate, onnx_model, holdout, native, gate, FAST)
        assert report.parity is not None and report.parity.max_abs_diff_allowed == 1e-4 and report.parity.passed
        assert report.timing is not None and not report.kept


def test_time_candidate_reports_ordered_latencies_and_throughput(tree_release: Any) -> None:
    # Given a frame with fewer rows than one batch, when timing, then rows are cycled, p50 <= p99 and all positive.
    _, onnx_model, holdout = tree_release
    timing = time_candidate(onnx_model.path, onnx_model.schema_, holdout.head(7), 40, 25, 1)
    assert 0 < timing.p50_ms <= timing.p99_ms
    assert timing.batch_rows_per_s > 0


def test_time_candidate_refuses_an_empty_frame(tree_release: Any) -> None:
    _, onnx_model, holdout = tree_release
    with pytest.raises(DataSourceError, match="empty"):
        time_candidate(onnx_model.path, onnx_model.schema_, holdout.head(0), 10, 10, 1)


def test_choose_candidate_picks_the_fastest_that_passed_parity() -> None:
    # Given a faster candidate that failed parity and one that passed and is clearly (50%) faster than fp32-base,
    # when choosing, then the fastest passing one is kept, the baseline is fp32-base, and every report says why
    # it was or was not kept.
    skipped = CandidateReport(
        candidate=Candidate(name=INT8_DYNAMIC, path=Path("x"), precision="int8", size_bytes=0),
        timing=None,
        parity=None,
        kept=False,
        reason="skipped: no MatMul/Gemm nodes",
    )
    reports = [
        _report(BASE, 2.0, True),
        _report(ORT_OPTIMIZED, 1.0, True),
        _report("fast-but-wrong", 0.5, False),
        skipped,
    ]
    result = choose_candidate(reports)
    assert result.chosen.name == ORT_OPTIMIZED
    assert result.speedup == pytest.approx(2.0)
    kept = {r.candidate.name: r.kept for r in result.reports}
    assert kept == {BASE: False, ORT_OPTIMIZED: True, "fast-but-wrong": False, INT8_DYNAMIC: False}
    reasons = {r.candidate.name: r.reason for r in result.reports}
    assert reasons[BASE].startswith("slower than fp32-ort")
    assert reasons[ORT_OPTIMIZED].startswith("chosen")
    assert reasons[INT8_DYNAMIC] == "skipped: no MatMul/Gemm nodes"


def test_choose_candidate_keeps_nothing_when_none_passed_and_returns_the_base_numbers() -> None:
    # Given no candidate within the parity bound, when choosing, then nothing is kept and fp32-base is returned,
    # so the parity gate fails on the conversion's own numbers (not on an optimization's).
    result = choose_candidate([_report(ORT_OPTIMIZED, 1.0, False), _report(BASE, 2.0, False)])
    assert result.chosen.name == BASE and not result.chosen_parity.passed
    assert not any(r.kept for r in result.reports)
    assert all("none kept" in r.reason for r in result.reports)


def test_choose_candidate_without_the_base_report_is_a_wiring_error() -> None:
    with pytest.raises(ValueError, match="fp32-base"):
        choose_candidate([_report(ORT_OPTIMIZED, 1.0, True)])


def test_optimization_tags_name_the_variant_and_its_numbers() -> None:
    # Given a choice, when turned into registry tags, then they carry the variant, timing, parity and verdicts.
    tags = optimization_tags(choose_candidate([_report(BASE, 2.0, True), _report(ORT_OPTIMIZED, 1.0, True)]))
    assert tags["slipway.optimize.variant"] == ORT_OPTIMIZED
    assert tags["slipway.optimize.speedup"] == "2.000"
    assert tags["slipway.parity.passed"] == "true"
    assert tags[f"slipway.optimize.candidate.{ORT_OPTIMIZED}"].startswith("kept: chosen")
    assert all(isinstance(v, str) for v in tags.values())


@pytest.mark.parametrize("gain", [0.0, 0.05, 0.099])
def test_choose_candidate_keeps_the_base_unless_a_variant_is_clearly_faster(gain: float) -> None:
    # Given fp32-ort passing parity but less than 10% faster than fp32-base (equivalent graphs differ by noise),
    # when choosing, then fp32-base is kept (speedup 1) and fp32-ort's report says it was not fast enough.
    result = choose_candidate([_report(BASE, 1.0, True), _report(ORT_OPTIMIZED, 1.0 - gain, True)])
    assert result.chosen.name == BASE and result.speedup == 1.0
    reasons = {r.candidate.name: (r.kept, r.reason) for r in result.reports}
    assert reasons[BASE][0] and reasons[BASE][1].startswith("chosen: fp32-base, no variant")
    assert not reasons[ORT_OPTIMIZED][0]
    assert reasons[ORT_OPTIMIZED][1].startswith(f"not {MIN_GAIN_OVER_BASE:.0%} faster than fp32-base")


def test_choose_candidate_takes_a_variant_at_least_10_percent_faster() -> None:
    # Given fp32-ort exactly 10% and int8 12% below fp32-base's p50, both passing, when choosing, then the fastest
    # of them is kept and the other is reported as slower than it.
    assert MIN_GAIN_OVER_BASE == 0.10
    at_bound = choose_candidate([_report(BASE, 1.0, True), _report(ORT_OPTIMIZED, 0.9, True)])
    assert at_bound.chosen.name == ORT_OPTIMIZED
    result = choose_candidate(
        [_report(BASE, 1.0, True), _report(ORT_OPTIMIZED, 0.9, True), _report(INT8_DYNAMIC, 0.88, True, "int8")]
    )
    assert result.chosen.name == INT8_DYNAMIC
    reasons = {r.candidate.name: r.reason for r in result.reports}
    assert reasons[ORT_OPTIMIZED].startswith("slower than int8-dynamic")
    assert reasons[BASE].startswith("slower than int8-dynamic")


def test_choose_candidate_without_the_gain_a_slower_variant_is_reported_as_slower() -> None:
    # Given fp32-ort passing but slower than fp32-base, when choosing, then fp32-base is kept and fp32-ort is
    # reported as slower (not as "not 10% faster").
    result = choose_candidate([_report(BASE, 1.0, True), _report(ORT_OPTIMIZED, 1.3, True)])
    assert result.chosen.name == BASE
    assert {r.candidate.name: r.reason for r in result.reports}[ORT_OPTIMIZED].startswith("slower than fp32-base")


def test_choose_candidate_takes_any_passing_variant_when_the_base_failed_parity() -> None:
    # Given fp32-base failing parity and fp32-ort passing at the same speed, when choosing, then fp32-ort is kept:
    # the gain rule only guards against swapping a valid base for noise.
    result = choose_candidate([_report(BASE, 1.0, False), _report(ORT_OPTIMIZED, 1.0, True)])
    assert result.chosen.name == ORT_OPTIMIZED and result.chosen_parity.passed
    assert {r.candidate.name: r.kept for r in result.reports} == {BASE: False, ORT_OPTIMIZED: True}
