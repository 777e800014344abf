"""The lean POST /predict: same model, schema, answers and errors as the BentoML API, without its per-request cost.

BentoML's API path (IO descriptor, context, thread hand-off, response model) costs several times what the
model does for a one-row request. RequestGuard (the service's ASGI middleware) hands POST /predict to the
handler the worker installed here, which validates the raw body with the same pydantic request model
(`model_validate_json`, in Rust), runs the predictor on the event loop (one row is tens of microseconds;
the batch is capped by SLIPWAY_MAX_BATCH_ROWS), queues the inference-log entry and writes the JSON with orjson.
The BentoML API stays registered: it types the OpenAPI document, and serves /predict whenever no handler is
installed (SLIPWAY_FAST_PATH=0, or before the worker has built the service).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from serving.inference_log import InferenceLog
from serving.metrics import ServiceMetrics
from serving.predictor import Predictor, request_id_from
from serving.schema import RequestBase, request_columns

try:
    import orjson

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value)
except ImportError:  # pragma: no cover - orjson ships with the Bento; plain json is the fallback
    import json

    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()


_LOG = logging.getLogger("slipway.serving")


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, JSON body, extra headers."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


class FastPredict:
    """Answers one /predict body; never raises (an unexpected error is a logged 500)."""

    def __init__(
        self,
        predictor: Predictor,
        request_type: type[RequestBase],
        metrics: ServiceMetrics,
        inference_log: InferenceLog | None,
    ) -> None:
        self.predictor = predictor
        self.request_type = request_type
        self.metrics = metrics
        self.inference_log = inference_log
        spec = predictor.spec
        self._spec = spec
        self._classes = list(spec.classes) if spec.task == "classification" and spec.classes is not None else None

    def __call__(self, body: bytes, request_id_header: str | None) -> Answer:
        started = time.perf_counter()
        request_id = request_id_from(request_id_header)
        headers = ((b"x-request-id", request_id.encode()),)
        try:
            request = self.request_type.model_validate_json(body)
        except ValidationError as error:
            # Locations and messages only: never the values (they may be personal data).
            details = error.errors(include_input=False, include_url=False, include_context=False)
            fields = sorted({".".join(str(part) for part in d["loc"]) or d["type"] for d in details})
            _LOG.warning("rejected /predict request %s: invalid %s", request_id, ", ".join(fields))
            # The documented 400 body (BentoML's InvalidArgument): `error` and `detail`, both strings.
            problems = "; ".join(f"{'.'.join(str(p) for p in d['loc']) or d['type']}: {d['msg']}" for d in details)
            refusal = {"error": f"invalid request: {', '.join(fields)}", "detail": problems}
            return Answer(400, dumps(refusal), headers)
        try:
            columns = request_columns(request)
            feeds = self.predictor.feeds(columns)
            result = self.predictor.run(feeds)
            spec = self._spec
            answer: dict[str, Any] = {"predictions": result.predictions}
            # Classifiers only: the OpenAPI document types both as arrays (not nullable), so a regressor leaves
            # them out rather than sending null.
            if result.probabilities is not None:
                answer["probabilities"] = result.probabilities
            if self._classes is not None:
                answer["classes"] = self._classes
            answer.update(model_name=spec.model_name, model_version=spec.model_version, request_id=request_id)
            payload = dumps(answer)
            self.metrics.prediction_rows.inc(len(result.predictions))
            if self.inference_log is not None:
                self.inference_log.record_columns(
                    request_id,
                    spec.model_name,
                    spec.model_version,
                    columns,
                    result.predictions,
                    result.scores,
                    (time.perf_counter() - started) * 1000.0,
                    floats=feeds.floats,
                    float_names=feeds.float_names,
                )
        except Exception:
            _LOG.exception("/predict request %s failed", request_id)
            return Answer(500, dumps({"error": "internal error", "request_id": request_id}), headers)
        return Answer(200, payload, headers)


_HANDLER: FastPredict | None = None


def install(handler: FastPredict | None) -> None:
    """Make `handler` answer POST /predict in this process (None: leave it to the BentoML API)."""
    global _HANDLER
    _HANDLER = handler


def installed() -> FastPredict | None:
    """The handler of this process, if any."""
    return _HANDLER
