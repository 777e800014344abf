"""The served Bento's auth, body limit, /metrics and inference log, on real `bentoml serve` processes.

Proves: with SLIPWAY_API_KEYS set, /predict without a key or with a wrong one gets 401 (the key never echoed)
and the right key 200, while health and /metrics stay open; auth is off by default; bodies over
SLIPWAY_MAX_BODY_BYTES get 413 naming the limit, by Content-Length and when chunked; /metrics counts rows,
errors by kind and names the model served, summed over two workers; BentoML's request metrics and access log
still see every /predict answer with the guard in front of its other middleware; every served row reaches the
inference log by the time a SIGTERMed server has stopped; an unwritable log store costs no request, only counted
rows.
"""

# ruff: noqa: F811  (the fixtures imported from test_bento are used by name)
from __future__ import annotations

import dataclasses
import re
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import psutil
import pytest

from serving.inference_log import read_window
from tasks.package import linked_bentoml_home
from tests.serving.test_bento import (  # noqa: F401
    BuiltBento,
    ExampleModel,
    RunningServer,
    built_bento,
    example_model,
    stop_server,
)
from tests.serving.test_bento import start_server as start_bento_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

KEYS = ("key-one-5f1c", "key-two-9a7e")
BODY_LIMIT = 16_000


def start_server(bento: BuiltBento, log_dir: Path, **env: str) -> tuple[subprocess.Popen[bytes], RunningServer]:
    """`bentoml serve` of the Bento with two workers (unless env says otherwise) and the given settings, ready."""
    return start_bento_server(bento, log_dir, **{"SLIPWAY_WORKERS": "2", **env})


@pytest.fixture(scope="module")
def guarded(built_bento: BuiltBento, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Keys and a small body limit; the inference log points below a regular file, so no write can succeed."""
    folder = tmp_path_factory.mktemp("guarded")
    (folder / "not-a-folder").write_text("")
    process, server = start_server(
        built_bento,
        folder,
        SLIPWAY_API_KEYS=",".join(KEYS),
        SLIPWAY_MAX_BODY_BYTES=str(BODY_LIMIT),
        SLIPWAY_INFERENCE_LOG_URL=f"sqlite:///{folder}/not-a-folder/log.db",
        SLIPWAY_INFERENCE_LOG_FLUSH_S="0.1",
    )
    try:
        yield server
    finally:
        stop_server(process)


def records(example: ExampleModel, rows: int) -> dict[str, Any]:
    return {"records": example.rows.head(rows).to_dict(orient="records")}


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (over workers, when labelled by pid)."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def scrape(server: RunningServer) -> str:
    response = httpx.get(f"{server.url}/metrics", timeout=10.0)
    assert response.status_code == 200
    return response.text


def test_predict_without_a_key_is_401(guarded: RunningServer, example_model: ExampleModel):
    response = httpx.post(f"{guarded.url}/predict", json=records(example_model, 1), timeout=10.0)
    assert response.status_code == 401
    assert "authorization" in response.json()["error"].lower()


def test_predict_with_a_wrong_key_is_401_and_the_key_is_not_echoed(guarded: RunningServer, example_model: ExampleModel):
    wrong = "wrong-key-0000"
    response = httpx.post(
        f"{guarded.url}/predict",
        json=records(example_model, 1),
        headers={"authorization": f"Bearer {wrong}"},
        timeout=10.0,
    )
    assert response.status_code == 401
    assert response.json() == {"error": "invalid API key"}
    assert wrong not in response.text
    assert not any(k in guarded.log_path.read_text() for k in (wrong, *KEYS))


@pytest.mark.parametrize("key", KEYS)
def test_predict_with_a_right_key_is_200(guarded: RunningServer, example_model: ExampleModel, key: str):
    response = httpx.post(
        f"{guarded.url}/predict",
        json=records(example_model, 3),
        headers={"authorization": f"Bearer {key}"},
        timeout=10.0,
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 3


def test_health_and_metrics_stay_open(guarded: RunningServer):
    for path in ("/healthz", "/livez", "/readyz", "/metrics"):
        assert httpx.get(f"{guarded.url}{path}", timeout=5.0).status_code == 200, path


def ready_markers(server: RunningServer) -> Path:
    """Where the server's workers say they have loaded (serving.readiness)."""
    return Path(tempfile.gettempdir()) / f"slipway-ready-{server.pid}"


def test_readyz_is_ready_only_while_every_worker_has_loaded(guarded: RunningServer, example_model: ExampleModel):
    # Given the two-worker server, ready: each of its workers has left a marker naming its process
    markers = sorted(ready_markers(guarded).glob("slipway-worker-*.ready"))
    assert [marker.name for marker in markers] == ["slipway-worker-1.ready", "slipway-worker-2.ready"]
    workers = {child.pid for child in psutil.Process(guarded.pid).children()}
    assert {int(marker.read_text()) for marker in markers} == workers
    # When one worker's marker is gone, as before that worker has loaded
    second = markers[1].read_text()
    markers[1].unlink()
    try:
        # Then /readyz is 503 whichever worker answers it (new connections, so both get some), and health stays 200
        probes = [httpx.get(f"{guarded.url}/readyz", timeout=5.0).status_code for _ in range(8)]
        assert probes == [503] * 8
        assert httpx.get(f"{guarded.url}/healthz", timeout=5.0).status_code == 200
    finally:
        markers[1].write_text(second)
    # And once it is back, ready again
    assert httpx.get(f"{guarded.url}/readyz", timeout=5.0).status_code == 200


def own_home(bento: BuiltBento, folder: Path) -> BuiltBento:
    """The Bento in a BentoML home of its own (its stores linked in, as `slipway deploy` does for each backend):
    a server started on a shared home empties the metrics folder of the servers already running on it."""
    return dataclasses.replace(bento, home=linked_bentoml_home(bento.home, folder / "bentoml"))


def test_readyz_waits_for_the_workers_bentoml_was_configured_to_start(built_bento: BuiltBento, tmp_path: Path):
    # Given SLIPWAY_WORKERS=2 overridden by BentoML's own configuration to one worker
    bento = own_home(built_bento, tmp_path)
    process, server = start_server(bento, tmp_path, BENTOML_CONFIG_OPTIONS="services.slipway.workers=1")
    try:
        # Then the server gets ready (start_server waits for /readyz) with the one worker BentoML started
        workers = psutil.Process(server.pid).children()
        assert len(workers) == 1
        markers = list(ready_markers(server).glob("slipway-worker-*.ready"))
        assert [int(marker.read_text()) for marker in markers] == [workers[0].pid]
    finally:
        stop_server(process)


def test_body_over_the_limit_is_413_naming_it(guarded: RunningServer):
    body = b'{"records": [' + b" " * BODY_LIMIT + b"]}"
    headers = {"authorization": f"Bearer {KEYS[0]}", "content-type": "application/json"}
    response = httpx.post(f"{guarded.url}/predict", content=body, headers=headers, timeout=10.0)
    assert response.status_code == 413
    assert str(BODY_LIMIT) in response.json()["error"]


def test_chunked_body_over_the_limit_is_413(guarded: RunningServer):
    def chunks() -> Iterator[bytes]:
        yield b'{"records": ['
        for _ in range(BODY_LIMIT // 1000 + 2):
            yield b" " * 1000
        yield b"]}"

    headers = {"authorization": f"Bearer {KEYS[0]}", "content-type": "application/json"}
    response = httpx.post(f"{guarded.url}/predict", content=chunks(), headers=headers, timeout=10.0)
    assert response.status_code == 413
    assert str(BODY_LIMIT) in response.json()["error"]


def test_chunked_body_under_the_limit_is_served(guarded: RunningServer, example_model: ExampleModel):
    import json

    payload = json.dumps(records(example_model, 2)).encode()
    headers = {"authorization": f"Bearer {KEYS[0]}", "content-type": "application/json"}
    response = httpx.post(f"{guarded.url}/predict", content=iter([payload[:10], payload[10:]]), headers=headers)
    assert response.status_code == 200, response.text


def test_metrics_count_rows_errors_and_name_the_model(guarded: RunningServer, example_model: ExampleModel):
    auth = {"authorization": f"Bearer {KEYS[1]}"}
    before = scrape(guarded)
    for _ in range(6):  # two workers: requests spread over both
        assert httpx.post(f"{guarded.url}/predict", json=records(example_model, 5), headers=auth).status_code == 200
    assert httpx.post(f"{guarded.url}/predict", json={"records": [{"nope": 1}]}, headers=auth).status_code == 400
    assert httpx.post(f"{guarded.url}/predict", json=records(example_model, 1)).status_code == 401
    after = scrape(guarded)

    assert metric(after, "slipway_prediction_rows_total") - metric(before, "slipway_prediction_rows_total") == 30
    for kind, expected in (("validation", 1), ("auth", 1), ("body_too_large", 0), ("internal", 0)):
        delta = metric(after, "slipway_errors_total", kind=kind) - metric(before, "slipway_errors_total", kind=kind)
        assert delta == expected, kind
    assert metric(after, "slipway_model_info", model_name="Breast-Cancer Classifier", model_version="3") == 1
    assert "slipway_inference_log_rows_dropped_total" in after


def test_bentoml_request_metrics_and_access_log_still_see_every_predict(
    guarded: RunningServer, example_model: ExampleModel
):
    # Given the guard in front of BentoML's tracing and timeout middleware, behind its metrics and access log
    auth = {"authorization": f"Bearer {KEYS[0]}"}
    before = scrape(guarded)
    # When /predict is answered 200 four times (fast path), 400 once and 401 once
    for _ in range(4):
        assert httpx.post(f"{guarded.url}/predict", json=records(example_model, 1), headers=auth).status_code == 200
    assert httpx.post(f"{guarded.url}/predict", json={"records": []}, headers=auth).status_code == 400
    assert httpx.post(f"{guarded.url}/predict", json=records(example_model, 1)).status_code == 401
    after = scrape(guarded)

    # Then BentoML's request histograms and counters count each answer under its status, with BentoML's labels
    def delta(name: str, code: str) -> float:
        labels = {"endpoint": "/predict", "http_response_code": code, "runner_name": "slipway"}
        return metric(after, name, **labels) - metric(before, name, **labels)

    for code, expected in (("200", 4), ("400", 1), ("401", 1)):
        assert delta("bentoml_service_request_duration_seconds_count", code) == expected, code
        assert delta("bentoml_service_request_total", code) == expected, code
    assert delta("bentoml_service_request_duration_seconds_bucket", "200") > 0
    assert metric(after, "bentoml_service_request_in_progress", endpoint="/predict") == 0
    # And BentoML's access log (on by default) still has a line per answer
    deadline = time.monotonic() + 10
    pattern = re.compile(r"method=POST,path=/predict.*\(status=(200|400|401)")
    while len(pattern.findall(guarded.log_path.read_text())) < 6 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert {"200", "400", "401"} <= set(pattern.findall(guarded.log_path.read_text()))


def test_unwritable_log_store_keeps_serving_and_counts_the_loss(guarded: RunningServer, example_model: ExampleModel):
    auth = {"authorization": f"Bearer {KEYS[0]}"}
    for _ in range(4):
        assert httpx.post(f"{guarded.url}/predict", json=records(example_model, 2), headers=auth).status_code == 200
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if metric(scrape(guarded), "slipway_inference_log_rows_dropped_total", reason="write_failed") >= 8:
            break
        time.sleep(0.5)
    assert metric(scrape(guarded), "slipway_inference_log_rows_dropped_total", reason="write_failed") >= 8


@pytest.mark.parametrize("fast_path", ["1", "0"], ids=["fast-path", "bentoml-api"])
def test_every_served_row_is_logged_after_a_graceful_stop(
    built_bento: BuiltBento, example_model: ExampleModel, tmp_path: Path, fast_path: str
):
    # Given a server without keys (auth off by default) logging to a SQLite file, /predict answered by either path
    db = tmp_path / "inference_log.db"
    process, server = start_server(
        built_bento, tmp_path, SLIPWAY_INFERENCE_LOG_URL=f"sqlite:///{db}", SLIPWAY_FAST_PATH=fast_path
    )
    served_rows = 0
    answered: dict[str, list[list[float]]] = {}  # request id -> the probabilities in the response
    lock = threading.Lock()
    failures: list[str] = []
    try:
        # When 300 requests (mixed 1- and 10-row) come from 4 threads
        def client(index: int) -> None:
            nonlocal served_rows
            with httpx.Client(base_url=server.url, timeout=30.0) as http:
                for i in range(75):
                    rows = 10 if (i + index) % 2 else 1
                    response = http.post("/predict", json=records(example_model, rows))
                    if response.status_code != 200:
                        failures.append(f"{response.status_code}: {response.text[:200]}")
                        continue
                    body = response.json()
                    with lock:
                        served_rows += len(body["predictions"])
                        answered[body["request_id"]] = body["probabilities"]

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        # And the server is stopped with SIGTERM
        stop_server(process)
    assert not failures, failures[:3]
    assert not ready_markers(server).exists()  # each worker took its ready marker away as it stopped
    assert served_rows == 150 * 1 + 150 * 10
    # Then every served row is in the log, none twice (a table row holds one request, or the requests one model
    # call answered together: adaptive batching on the fast path)
    with sqlite3.connect(db) as connection:
        (logged,) = connection.execute("SELECT SUM(n_rows) FROM inference_log").fetchone()
    assert logged == served_rows
    frame = read_window(f"sqlite:///{db}", since=datetime(2000, 1, 1, tzinfo=UTC), probabilities=True)
    assert len(frame) == served_rows and frame["request_id"].nunique() == 300
    assert frame.groupby("request_id").size().isin([1, 10]).all()
    # And it reads back as sent: a 10-row request's features, in the model's order, float for float, and every
    # request's probabilities as answered (1-row requests store them as JSON, 10-row ones as bytes)
    logged_probabilities = frame.groupby("request_id", sort=False)["probabilities"].agg(list).to_dict()
    assert logged_probabilities == answered
    names = example_model.schema.feature_names
    assert list(frame.columns[: len(names)]) == names
    ten_rows = frame.groupby("request_id").filter(lambda request: len(request) == 10)
    first = ten_rows[ten_rows["request_id"] == ten_rows["request_id"].iloc[0]]
    sent = example_model.rows.head(10)[names].reset_index(drop=True)
    pd.testing.assert_frame_equal(first[names].reset_index(drop=True), sent, check_dtype=False)
