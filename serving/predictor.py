"""One ONNX Runtime session over a verified model file, and the plain request -> response function.

Kept free of BentoML so later phases (batching, metrics, inference log, auth) can wrap these functions
without touching the model code, and so they can be tested in-process.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serving.features import ModelFeeds, float_feature_names, model_feeds, onnx_input_type, served_feeds
from serving.schema import PredictResponse, RequestBase, label_type, request_columns
from serving.spec import ModelIntegrityError, ServingSpec, verify_model_file

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True)
class Prediction:
    """Labels (classifiers) or values (regressors) per row; class probabilities for classifiers."""

    predictions: list[Any]
    probabilities: list[list[float]] | None
    # The same probabilities as a float64 array of [rows, classes] (what the inference log stores).
    scores: np.ndarray | None = None


def open_session(path: Path) -> ort.InferenceSession:
    """A CPU session with all graph optimizations and one intra/inter-op thread (one session per worker).

    A file ONNX Runtime cannot load (truncated, not ONNX, an operator it lacks) is a ModelIntegrityError naming it.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own unexported classes (InvalidProtobuf, Fail, ...)
        raise ModelIntegrityError(
            f"{path} is not a model ONNX Runtime can load ({type(exc).__name__}: {str(exc)[:300]}); "
            "refusing to serve it"
        ) from None


def check_session(session: ort.InferenceSession, spec: ServingSpec) -> None:
    """Refuse a model whose ONNX inputs/outputs do not match the descriptor."""
    inputs = {i.name for i in session.get_inputs()}
    features = {f.name for f in spec.features}
    outputs = {o.name for o in session.get_outputs()}
    problems = []
    if inputs != features:
        problems.append(
            f"ONNX inputs {sorted(inputs)} differ from the descriptor features: "
            f"missing {sorted(features - inputs)}, unexpected {sorted(inputs - features)}"
        )
    expected = {f.name: onnx_input_type(f.dtype) for f in spec.features}
    mistyped = {i.name: i.type for i in session.get_inputs() if expected.get(i.name, i.type) != i.type}
    if mistyped:
        # e.g. a model converted for float32 feeds: every request would fail inside ONNX Runtime.
        problems.append(
            f"ONNX inputs {mistyped} do not take the feeds this service sends (numbers as tensor(double), "
            "categories as tensor(string)); convert the model again"
        )
    missing_outputs = {spec.label_output, spec.score_output} - outputs
    if missing_outputs:
        problems.append(f"ONNX outputs {sorted(outputs)} lack {sorted(missing_outputs)}")
    elif spec.task == "classification":
        onnx_type = next(o.type for o in session.get_outputs() if o.name == spec.label_output)
        expected = label_type(spec)
        if (expected is str) != (onnx_type == "tensor(string)") and expected in (str, int):
            problems.append(f"label output {spec.label_output!r} is {onnx_type} but the classes are {spec.classes}")
    if problems:
        raise ModelIntegrityError("; ".join(problems))


class Predictor:
    """A verified model and its session; `predict` is thread-safe (ORT sessions are)."""

    def __init__(self, session: ort.InferenceSession, spec: ServingSpec) -> None:
        self.session = session
        self.spec = spec
        self._features = spec.feature_pairs
        self._float_names = float_feature_names(self._features)  # once, not per request
        # Regressors may name one output as both label and score; ask ORT for each name once.
        self._outputs = list(dict.fromkeys([spec.label_output, spec.score_output]))
        # The compiled session under ORT's Python wrapper. The wrapper's run() first checks, in Python, that each
        # input is in the feed (a scan of a list per input; with 31 inputs, 3.6% of a loaded one-row worker's
        # py-spy samples, against 22.5% in the compiled call) and the feed's values' types; check_session has
        # matched the inputs to the features, the feeds always hold every feature as a numpy array, and ONNX
        # Runtime itself still refuses a missing input.
        self._run = getattr(session, "_sess", session).run

    @classmethod
    def load(cls, model_dir: Path, spec: ServingSpec) -> Predictor:
        """Check the sha256 of `model.onnx`, open it, and check its inputs and outputs."""
        session = open_session(verify_model_file(model_dir, spec))
        check_session(session, spec)
        return cls(session, spec)

    def feeds(self, columns: Mapping[str, Sequence[Any]]) -> ModelFeeds:
        """The ONNX Runtime feeds of feature name -> values (already validated): one [rows, 1] array each, the
        float features' views of one block (ModelFeeds.floats, which the inference log stores as it is)."""
        return model_feeds(self._features, columns, self._float_names)

    def served_feeds(self, parts: Sequence[Mapping[str, Sequence[Any]]]) -> ModelFeeds:
        """The feeds of requests the request schema validated, their rows one after another (serving.features.
        served_feeds): what feeds() gives for their columns joined, at less cost. Not for other input."""
        return served_feeds(self._features, parts, self._float_names)

    def predict(self, columns: Mapping[str, Sequence[Any]]) -> Prediction:
        """Run the model on feature name -> values (already validated)."""
        return self.run(self.feeds(columns))

    def run(self, feeds: ModelFeeds) -> Prediction:
        """Run the model on its feeds (Predictor.feeds)."""
        arrays = self._run(self._outputs, feeds.arrays, None)
        results = dict(zip(self._outputs, arrays, strict=True))
        scores = np.asarray(results[self.spec.score_output])
        if self.spec.task == "classification":
            probabilities = scores.astype(np.float64)
            return Prediction(
                predictions=np.asarray(results[self.spec.label_output]).reshape(-1).tolist(),
                probabilities=probabilities.tolist(),
                scores=probabilities,
            )
        return Prediction(predictions=scores.astype(np.float64).reshape(-1).tolist(), probabilities=None)


def is_request_id(value: str) -> bool:
    """Whether `value` is a request id the service keeps: 1 to 128 letters, digits and `._:-`."""
    return _REQUEST_ID.match(value) is not None


def request_id_from(header: str | None) -> str:
    """The caller's X-Request-ID when it is a sane token, else a fresh one (new_request_id)."""
    if header and is_request_id(header):
        return header
    return new_request_id()


def new_request_id() -> str:
    """32 hex digits: the time in nanoseconds, then 64 random bits. Unique like a UUID4, but in time order, so
    the inference log's request_id index grows at its right edge instead of at a random page per request (a
    random key there cost the log's writer about a third of its time per row)."""
    return f"{time.time_ns():016x}{secrets.token_hex(8)}"


_SLIPWAY_ID = re.compile(r"^[0-9a-f]{32}$")
_ID_TIMES_NS = (1_577_836_800 * 10**9, 4_102_444_800 * 10**9)  # 2020-01-01 to 2100-01-01: ids new_request_id made


def request_id_time(request_id: str) -> datetime | None:
    """When new_request_id made `request_id` (UTC), or None when it is not one of its ids: another shape, or a
    time outside 2020-2099 (a caller's X-Request-ID of 32 hex digits is random there)."""
    if not _SLIPWAY_ID.match(request_id):
        return None
    ns = int(request_id[:16], 16)
    if not _ID_TIMES_NS[0] <= ns < _ID_TIMES_NS[1]:
        return None
    return datetime.fromtimestamp(ns / 1e9, UTC)


def predict_response(
    predictor: Predictor,
    request: RequestBase,
    request_id: str,
    response_type: type[PredictResponse] = PredictResponse,
) -> PredictResponse:
    """Answer one validated /predict request."""
    result = predictor.predict(request_columns(request))
    return response_of(predictor.spec, result, request_id, response_type)


def response_of(
    spec: ServingSpec,
    result: Prediction,
    request_id: str,
    response_type: type[PredictResponse] = PredictResponse,
) -> PredictResponse:
    """The /predict answer for one prediction."""
    classifier = spec.task == "classification"
    return response_type(
        predictions=result.predictions,
        probabilities=result.probabilities,
        classes=list(spec.classes) if classifier and spec.classes is not None else None,
        model_name=spec.model_name,
        model_version=spec.model_version,
        request_id=request_id,
    )
