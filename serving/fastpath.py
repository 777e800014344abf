"""The lean POST /predict: same model, schema, answers and errors as the BentoML API, without its per-request cost.

BentoML's API path (IO descriptor, context, thread hand-off, response model) costs several times what the
model does for a one-row request. RequestGuard (the service's ASGI middleware) hands POST /predict to the
handler the worker installed here, which validates the raw body against the same request model
(serving.decode: msgspec for what the model accepts, the pydantic model itself for its 400s), runs the
predictor on the event loop (one row is tens of microseconds; a request is capped by SLIPWAY_MAX_BATCH_ROWS),
queues the inference-log entry and writes the JSON with orjson.
Adaptive batching (SLIPWAY_ADAPTIVE_BATCHING, on by default): the requests validated in the same event-loop turn
share one ONNX Runtime call (FastPredict.answer); a one-row call's fixed cost (~25 us: feeds, session.run,
results to lists) is then paid once per batch instead of once per request, and so is the inference log's: the
call's requests are one log row (InferenceLog.record_batch), each with its own id and latency in it.
The BentoML API stays registered: it types the OpenAPI document, and serves /predict whenever no handler is
installed (SLIPWAY_FAST_PATH=0, or before the worker has built the service).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from itertools import chain
from typing import Any, NamedTuple

import numpy as np
from pydantic import ValidationError

from serving.decode import RequestDecoder
from serving.features import ModelFeeds
from serving.inference_log import InferenceLog
from serving.metrics import ServiceMetrics
from serving.predictor import Prediction, Predictor, request_id_from

try:
    import orjson

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value)
except ImportError:  # pragma: no cover - orjson ships with the Bento; plain json is the fallback
    import json

    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()


_LOG = logging.getLogger("slipway.serving")


Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, JSON body, extra headers."""

    status: int
    body: bytes
    headers: Headers = ()


def _internal_error(request_id: str, headers: Headers) -> Answer:
    return Answer(500, dumps({"error": "internal error", "request_id": request_id}), headers)


class _Received(NamedTuple):
    """A valid /predict body as columns, and what its answer needs: the request id, the headers, the start time."""

    columns: dict[str, Any]
    request_id: str
    headers: Headers
    started: float


@dataclass
class _Waiting:
    """A validated request waiting for its turn's batch."""

    received: _Received
    n_rows: int
    answer: asyncio.Future[Answer]


class FastPredict:
    """Answers /predict bodies; never raises (an unexpected error is a logged 500).

    `answer` (what the guard awaits) batches adaptively: the requests whose bodies the worker's event loop
    validated in the same turn are predicted by one ONNX Runtime call, their columns joined, when they hold at
    most `max_batch_rows` rows together (a request is never split; a larger one goes alone). No timer: a
    request waits only for the other requests already parsed beside it, so a lone request is answered at once
    and a busy worker makes bigger batches. Nothing is ever shed. A batch whose joined call fails is predicted
    request by request, so one request cannot fail the others. `__call__` answers one body unbatched.
    """

    def __init__(
        self,
        predictor: Predictor,
        decoder: RequestDecoder,
        metrics: ServiceMetrics,
        inference_log: InferenceLog | None,
        *,
        max_batch_rows: int = 1000,
        batching: bool = True,
    ) -> None:
        self.predictor = predictor
        self.decoder = decoder
        self.metrics = metrics
        self.inference_log = inference_log
        self.max_batch_rows = max_batch_rows
        self.batching = batching
        spec = predictor.spec
        self._spec = spec
        self._classes = list(spec.classes) if spec.task == "classification" and spec.classes is not None else None
        self._waiting: list[_Waiting] = []

    def __call__(self, body: bytes, request_id_header: str | None) -> Answer:
        received = self._receive(body, request_id_header)
        if isinstance(received, Answer):
            return received
        return self._predict_alone(received)

    async def answer(self, body: bytes, request_id_header: str | None) -> Answer:
        """The answer to one body, predicted in a batch with the requests parsed in the same event-loop turn."""
        if not self.batching:
            return self(body, request_id_header)
        received = self._receive(body, request_id_header)
        if isinstance(received, Answer):
            return received
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        self._waiting.append(_Waiting(received, len(next(iter(received.columns.values()))), future))
        if len(self._waiting) == 1:  # the first of this turn: predict after the requests already scheduled
            loop.call_soon(self._flush)
        return await future

    def _receive(self, body: bytes, request_id_header: str | None) -> _Received | Answer:
        """A valid body as columns with its request id, answer headers and start time, or the answer refusing it."""
        started = time.perf_counter()
        request_id = request_id_from(request_id_header)
        headers = ((b"x-request-id", request_id.encode()),)
        parsed = self._parse(body, request_id, headers)
        if isinstance(parsed, Answer):
            return parsed
        return _Received(parsed, request_id, headers, started)

    def _parse(self, body: bytes, request_id: str, headers: Headers) -> dict[str, Any] | Answer:
        """The request's columns, or its 400."""
        try:
            return self.decoder(body)
        except ValidationError as error:
            # Locations and messages only: never the values (they may be personal data).
            details = error.errors(include_input=False, include_url=False, include_context=False)
            fields = sorted({".".join(str(part) for part in d["loc"]) or d["type"] for d in details})
            _LOG.warning("rejected /predict request %s: invalid %s", request_id, ", ".join(fields))
            # The documented 400 body (BentoML's InvalidArgument): `error` and `detail`, both strings.
            problems = "; ".join(f"{'.'.join(str(p) for p in d['loc']) or d['type']}: {d['msg']}" for d in details)
            refusal = {"error": f"invalid request: {', '.join(fields)}", "detail": problems}
            return Answer(400, dumps(refusal), headers)
        except Exception:
            _LOG.exception("/predict request %s failed", request_id)
            return _internal_error(request_id, headers)

    def _predict_alone(self, received: _Received) -> Answer:
        try:
            feeds = self.predictor.served_feeds((received.columns,))
            result = self.predictor.run(feeds)
            self.metrics.prediction_rows.inc(len(result.predictions))
            answer = self._answer(received, result)
            self._log_alone(received, result.predictions, result.scores, feeds.floats, feeds.float_names)
            return answer
        except Exception:
            _LOG.exception("/predict request %s failed", received.request_id)
            return _internal_error(received.request_id, received.headers)

    def _log_alone(
        self,
        received: _Received,
        predictions: list[Any],
        scores: np.ndarray | None,
        floats: np.ndarray | None,
        float_names: tuple[str, ...],
    ) -> None:
        """One request's inference-log row (when the log is on)."""
        if self.inference_log is not None:
            spec = self._spec
            self.inference_log.record_columns(
                received.request_id,
                spec.model_name,
                spec.model_version,
                received.columns,
                predictions,
                scores,
                (time.perf_counter() - received.started) * 1000.0,
                floats=floats,
                float_names=float_names,
            )

    def _answer(self, received: _Received, result: Prediction) -> Answer:
        """The 200 for one request's prediction."""
        spec = self._spec
        answer: dict[str, Any] = {"predictions": result.predictions}
        # Classifiers only: the OpenAPI document types both as arrays (not nullable), so a regressor leaves
        # them out rather than sending null.
        if result.probabilities is not None:
            answer["probabilities"] = result.probabilities
        if self._classes is not None:
            answer["classes"] = self._classes
        answer.update(model_name=spec.model_name, model_version=spec.model_version, request_id=received.request_id)
        return Answer(200, dumps(answer), received.headers)

    def _flush(self) -> None:
        """Predict the requests waiting from this turn, in batches of at most max_batch_rows rows."""
        waiting, self._waiting = self._waiting, []
        try:
            batch: list[_Waiting] = []
            rows = 0
            for item in waiting:
                if batch and rows + item.n_rows > self.max_batch_rows:
                    self._predict_batch(batch)
                    batch, rows = [], 0
                batch.append(item)
                rows += item.n_rows
            if batch:
                self._predict_batch(batch)
        except Exception:  # a callback's error would leave these requests waiting for ever: answer them 500
            _LOG.exception("/predict batch of %d requests failed", len(waiting))
            for item in waiting:
                _resolve(item, _internal_error(item.received.request_id, item.received.headers))

    def _predict_batch(self, batch: list[_Waiting]) -> None:
        self.metrics.batch_requests.observe(len(batch))
        if len(batch) == 1:
            (item,) = batch
            _resolve(item, self._predict_alone(item.received))
            return
        try:
            # Validated bodies: their float lists become one block without being joined as lists first.
            feeds = self.predictor.served_feeds([item.received.columns for item in batch])
            result = self.predictor.run(feeds)
            rows = sum(item.n_rows for item in batch)
            if len(result.predictions) != rows:
                raise ValueError(f"{len(result.predictions)} predictions for {rows} joined rows")
        except Exception:
            _LOG.warning(
                "a batch of %d /predict requests failed together; predicting each alone", len(batch), exc_info=True
            )
            for item in batch:
                _resolve(item, self._predict_alone(item.received))
            return
        self.metrics.prediction_rows.inc(len(result.predictions))
        answered: list[tuple[_Waiting, Answer]] = []
        start = 0
        for item in batch:
            end = start + item.n_rows
            try:
                part = Prediction(
                    predictions=result.predictions[start:end],
                    probabilities=None if result.probabilities is None else result.probabilities[start:end],
                )
                answer = self._answer(item.received, part)
            except Exception:
                _LOG.exception("/predict request %s failed", item.received.request_id)
                answer = _internal_error(item.received.request_id, item.received.headers)
            answered.append((item, answer))
            start = end
        for item, answer in answered:
            _resolve(item, answer)
        if self.inference_log is not None:  # after the answers: whatever happens here cannot change them
            self._log_batch(self.inference_log, answered, result, feeds)

    def _log_batch(
        self,
        log: InferenceLog,
        answered: list[tuple[_Waiting, Answer]],
        result: Prediction,
        feeds: ModelFeeds,
    ) -> None:
        """The inference log of one joined call: one row for all its requests (each one's id, rows and latency in
        it), or, if some request was answered 500 and so was not served, a row for each of the others."""
        if all(answer.status == 200 for _, answer in answered):
            now = time.perf_counter()
            spec = self._spec
            # The other features' values joined; the float features' are in feeds.floats (record_batch).
            in_block = set(feeds.float_names)
            parts = [item.received.columns for item, _ in answered]
            joined = {
                name: None if name in in_block else list(chain.from_iterable(part[name] for part in parts))
                for name in parts[0]
            }
            log.record_batch(
                [(i.received.request_id, i.n_rows, (now - i.received.started) * 1000.0) for i, _ in answered],
                spec.model_name,
                spec.model_version,
                joined,
                result.predictions,
                result.scores,
                floats=feeds.floats,
                float_names=feeds.float_names,
            )
            return
        start = 0
        for item, answer in answered:
            end = start + item.n_rows
            if answer.status == 200:
                scores = None if result.scores is None else result.scores[start:end]
                floats = None if feeds.floats is None else feeds.floats[:, start:end]
                self._log_alone(item.received, result.predictions[start:end], scores, floats, feeds.float_names)
            start = end


def _resolve(item: _Waiting, answer: Answer) -> None:
    if not item.answer.done():  # the client went away and its task was cancelled
        item.answer.set_result(answer)


_HANDLER: FastPredict | None = None


def install(handler: FastPredict | None) -> None:
    """Make `handler` answer POST /predict in this process (None: leave it to the BentoML API)."""
    global _HANDLER
    _HANDLER = handler


def installed() -> FastPredict | None:
    """The handler of this process, if any."""
    return _HANDLER
