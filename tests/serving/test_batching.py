"""Adaptive batching of the fast /predict, in-process with the example model in real ONNX Runtime sessions.

Proves: requests validated in the same event-loop turn are answered by one model call (joined while they fit in
max_batch_rows rows, a larger request alone), each with exactly the answer it gets unbatched (predictions,
probabilities, request id) and its own inference-log entry; a 400 among them stays a 400 and holds nobody up;
a joined call that fails is retried request by request. The served Bento's side is in test_bento.
"""

# ruff: noqa: F811  (the fixtures imported from test_bento are used by name)
from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import pytest

from serving.decode import RequestDecoder
from serving.fastpath import Answer, FastPredict
from serving.inference_log import InferenceLog, read_window, sqlite_url
from serving.metrics import service_metrics
from serving.predictor import Predictor, open_session
from serving.spec import file_sha256
from tests.serving.test_bento import ExampleModel, example_model, records_of  # noqa: F401

pytestmark = [pytest.mark.timeout(120)]

MAX_ROWS = 60


@pytest.fixture()
def predictor(example_model: ExampleModel) -> Predictor:
    from tasks.convert import encoded_categories
    from tasks.package import serving_spec

    path = example_model.onnx_path
    spec = serving_spec(
        example_model.schema, "label", "probabilities", "m", "7", file_sha256(path), encoded_categories(onnx.load(path))
    )
    return Predictor(open_session(path), spec)


@pytest.fixture()
def inference_log(tmp_path: Path) -> Iterator[InferenceLog]:
    from prometheus_client import CollectorRegistry

    log = InferenceLog(sqlite_url(tmp_path / "log.db"), registry=CollectorRegistry()).start()
    try:
        yield log
    finally:
        log.close()


def _logged(log: InferenceLog, tmp_path: Path) -> Any:
    from datetime import UTC, datetime

    log.close()
    return read_window(sqlite_url(tmp_path / "log.db"), since=datetime(2000, 1, 1, tzinfo=UTC))


def _batches() -> tuple[float, float]:
    """(model calls, requests) the batch histogram has seen in this process."""
    samples = {s.name: s.value for s in service_metrics().batch_requests.collect()[0].samples}
    return samples["slipway_predict_batch_requests_count"], samples["slipway_predict_batch_requests_sum"]


def _body(example: ExampleModel, rows: int, offset: int) -> bytes:
    records = (records_of(example) * 4)[offset : offset + rows]
    return json.dumps({"records": records}).encode()


async def _answer_all(fast: FastPredict, bodies: list[bytes]) -> list[Answer]:
    """Every body handed to `answer` in one event-loop turn, as the guard's tasks do under load."""
    return list(await asyncio.gather(*(fast.answer(body, f"req-{i}") for i, body in enumerate(bodies))))


def test_requests_of_one_turn_share_model_calls_and_each_gets_its_unbatched_answer(
    example_model: ExampleModel, predictor: Predictor, inference_log: InferenceLog, tmp_path: Path
) -> None:
    # Given 9 requests of 1 to 50 rows and a malformed one, parsed in the same turn, at most 60 rows a call
    fast = FastPredict(
        predictor, RequestDecoder(predictor.spec, MAX_ROWS), service_metrics(), inference_log, max_batch_rows=MAX_ROWS
    )
    sizes = [1, 3, 1, 7, 50, 2, 1, 40, 1]
    bodies = [_body(example_model, rows, offset=i) for i, rows in enumerate(sizes)]
    bodies.insert(4, b'{"records": [{"mean_radius": "big"}]}')
    calls, requests = _batches()
    # When they are answered
    answers = asyncio.run(_answer_all(fast, bodies))
    # Then each valid one has exactly what it gets alone, under its own request id; the malformed one a 400
    unbatched = FastPredict(predictor, fast.decoder, service_metrics(), None, batching=False)
    for i, (body, answer) in enumerate(zip(bodies, answers, strict=True)):
        alone = unbatched(body, f"req-{i}")
        assert (answer.status, answer.body, answer.headers) == (alone.status, alone.body, alone.headers), i
    assert answers[4].status == 400 and [a.status for a in answers].count(200) == len(sizes)
    # And the rows went in three calls, in arrival order: 1+3+1+7 (+50 would pass 60), 50+2+1 (+40 would), 40+1
    after_calls, after_requests = _batches()
    assert (after_calls - calls, after_requests - requests) == (3, len(sizes))
    # And the log holds one table row per call, in which each request has its own rows, features, predictions
    # and latency
    window = _logged(inference_log, tmp_path)
    assert window.groupby("request_id").size().to_dict() == {
        f"req-{i if i < 4 else i + 1}": rows for i, rows in enumerate(sizes)
    }
    assert window.groupby("request_id")["latency_ms"].nunique().eq(1).all() and (window["latency_ms"] > 0).all()
    with sqlite3.connect(tmp_path / "log.db") as connection:
        stored = connection.execute("SELECT request_id, n_rows, requests FROM inference_log ORDER BY id").fetchall()
    assert [(request_id, n_rows) for request_id, n_rows, _ in stored] == [("req-0", 12), ("req-5", 53), ("req-8", 41)]
    assert [[part[:2] for part in json.loads(requests)] for _, _, requests in stored] == [
        [["req-0", 1], ["req-1", 3], ["req-2", 1], ["req-3", 7]],
        [["req-5", 50], ["req-6", 2], ["req-7", 1]],
        [["req-8", 40], ["req-9", 1]],
    ]
    for i, (body, answer) in enumerate(zip(bodies, answers, strict=True)):
        if answer.status != 200:
            continue
        logged = window[window["request_id"] == f"req-{i}"]
        sent = json.loads(body)["records"]
        assert logged["mean_radius"].tolist() == [row["mean_radius"] for row in sent], i
        assert logged["size_band"].tolist() == [row["size_band"] for row in sent], i
        assert logged["prediction"].tolist() == json.loads(answer.body)["predictions"], i


def test_a_joined_call_that_fails_is_answered_request_by_request(
    example_model: ExampleModel, predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a model call that fails whenever it is given more than one request's rows (a stand-in for any batch
    # failure: validated requests do not make the real one fail)
    fast = FastPredict(predictor, RequestDecoder(predictor.spec, MAX_ROWS), service_metrics(), None)
    real_run = predictor.run

    def run_one_at_a_time(feeds: Any) -> Any:
        rows = len(next(iter(feeds.arrays.values())))
        if rows > 2:
            raise RuntimeError("joined call failed")
        return real_run(feeds)

    monkeypatch.setattr(predictor, "run", run_one_at_a_time)
    bodies = [_body(example_model, 2, offset=i) for i in range(4)]
    # When four two-row requests arrive together, then each is answered on its own: 200, its own predictions
    answers = asyncio.run(_answer_all(fast, bodies))
    assert [a.status for a in answers] == [200] * 4
    for i, answer in enumerate(answers):
        assert json.loads(answer.body)["request_id"] == f"req-{i}"
        assert len(json.loads(answer.body)["predictions"]) == 2


def test_a_request_answered_500_in_a_joined_call_is_not_logged_and_the_others_are_logged_alone(
    example_model: ExampleModel,
    predictor: Predictor,
    inference_log: InferenceLog,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given three requests joined in one call, and an answer that cannot be built for the second
    fast = FastPredict(predictor, RequestDecoder(predictor.spec, MAX_ROWS), service_metrics(), inference_log)
    real_answer = fast._answer

    def answer_or_fail(received: Any, result: Any) -> Answer:
        if received.request_id == "req-1":
            raise RuntimeError("answer failed")
        return real_answer(received, result)

    monkeypatch.setattr(fast, "_answer", answer_or_fail)
    # When they are answered
    answers = asyncio.run(_answer_all(fast, [_body(example_model, rows, i) for i, rows in enumerate((2, 3, 1))]))
    # Then the second gets its 500 and is not in the log (it was not served); the others are, each its own rows
    assert [a.status for a in answers] == [200, 500, 200]
    window = _logged(inference_log, tmp_path)
    assert window.groupby("request_id", sort=False).size().to_dict() == {"req-0": 2, "req-2": 1}
    assert window["prediction"].tolist() == [
        *json.loads(answers[0].body)["predictions"],
        *json.loads(answers[2].body)["predictions"],
    ]


def test_a_lone_request_is_answered_in_its_own_turn(example_model: ExampleModel, predictor: Predictor) -> None:
    # Given one request, when it is answered, then it does not wait for a timer: one model call, at once
    fast = FastPredict(predictor, RequestDecoder(predictor.spec, MAX_ROWS), service_metrics(), None)
    calls, requests = _batches()
    (answer,) = asyncio.run(_answer_all(fast, [_body(example_model, 1, 0)]))
    assert answer.status == 200
    assert _batches() == (calls + 1, requests + 1)


def test_an_error_outside_the_model_call_answers_the_batch_500_instead_of_leaving_it_waiting(
    example_model: ExampleModel, predictor: Predictor
) -> None:
    # Given a metric that raises when the batch is counted (any error in the flush callback would otherwise be
    # swallowed by the event loop, and the requests would wait for ever)
    import dataclasses

    class Broken:
        def observe(self, _value: float) -> None:
            raise RuntimeError("metrics file gone")

    metrics = dataclasses.replace(service_metrics(), batch_requests=Broken())
    fast = FastPredict(predictor, RequestDecoder(predictor.spec, MAX_ROWS), metrics, None)
    # When three requests arrive together, then each is answered: a 500 naming its request id
    answers = asyncio.run(asyncio.wait_for(_answer_all(fast, [_body(example_model, 1, i) for i in range(3)]), 10))
    assert [a.status for a in answers] == [500] * 3
    assert [json.loads(a.body)["request_id"] for a in answers] == ["req-0", "req-1", "req-2"]
