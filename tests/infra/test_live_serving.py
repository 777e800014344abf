"""The serving side of infra/ against a real `bentoml serve` of a real Bento, and a real Prometheus scraping it.

The server gets exactly the environment infra/k8s/deployment.yaml gives the container (its literal values, and
test values where it reads the Secret), as the image's entrypoint would.

Proves: with those settings the service starts; the probe paths answer without a key while /predict needs one
(the Secret's keys take effect and the ServiceMonitor's scrape needs no credentials); every metric the dashboard
selects, with every label its queries match or group on and its legends print, is in the live /metrics;
Prometheus 2.42 (Debian's), configured from infra/prometheus/prometheus.yml with only the target address changed,
scrapes the service, and every PromQL query of the dashboard, as Grafana sends it, returns finite values for it.

Not checked here: the container image itself (needs a Docker engine), Grafana rendering the panels (Grafana is not
installable here).
"""

# ruff: noqa: F811  (the fixtures imported from test_bento are used by name)
from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.infra.assets import (
    exposed_series,
    legend_label_names,
    panel_queries,
    promql_for_prometheus,
    selected_label_names,
    selected_metrics,
    serving_container,
)
from tests.prometheus import instant, running_prometheus
from tests.serving.test_bento import (  # noqa: F401
    BuiltBento,
    ExampleModel,
    RunningServer,
    built_bento,
    example_model,
    start_server,
    stop_server,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

API_KEY = "infra-test-key-7c41"


def deployment_env(log_db: Path) -> dict[str, str]:
    """The container's environment from deployment.yaml: literal values as written, Secret keys with test values."""
    secrets = {"api-keys": API_KEY, "inference-log-url": f"sqlite:///{log_db}"}
    env = {}
    for item in serving_container()["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = secrets[item["valueFrom"]["secretKeyRef"]["key"]]
    return env


@pytest.fixture(scope="module")
def served(built_bento: BuiltBento, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("k8s-env")
    process, running = start_server(built_bento, folder, **deployment_env(folder / "inference_log.db"))
    try:
        yield running
    finally:
        stop_server(process)


def body(example: ExampleModel, rows: int = 2) -> dict[str, Any]:
    return {"records": example.rows.head(rows).to_dict(orient="records")}


def send_traffic(server: RunningServer, example: ExampleModel, good: int = 20) -> None:
    """Good requests with the key, plus one refused for its input (400) and one without a key (401)."""
    auth = {"authorization": f"Bearer {API_KEY}"}
    with httpx.Client(timeout=10.0) as client:
        for _ in range(good):
            assert client.post(f"{server.url}/predict", json=body(example), headers=auth).status_code == 200
        assert client.post(f"{server.url}/predict", json={"records": [{"nope": 1}]}, headers=auth).status_code == 400
        assert client.post(f"{server.url}/predict", json=body(example)).status_code == 401


def scrape(server: RunningServer) -> str:
    response = httpx.get(f"{server.url}/metrics", timeout=10.0)
    assert response.status_code == 200
    return response.text


def test_probes_and_metrics_answer_without_a_key_and_predict_needs_one(served: RunningServer, example_model):
    container = serving_container()
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        path = container[probe]["httpGet"]["path"]
        assert httpx.get(f"{served.url}{path}", timeout=5.0).status_code == 200, path
    assert httpx.get(f"{served.url}/metrics", timeout=5.0).status_code == 200
    assert httpx.post(f"{served.url}/predict", json=body(example_model), timeout=10.0).status_code == 401
    ok = httpx.post(
        f"{served.url}/predict",
        json=body(example_model),
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=10.0,
    )
    assert ok.status_code == 200, ok.text


def test_every_metric_and_label_the_dashboard_uses_is_exported(served: RunningServer, example_model):
    send_traffic(served, example_model)
    deadline = time.monotonic() + 20
    while True:  # the inference log writes in the background (SLIPWAY_INFERENCE_LOG_FLUSH_S)
        series = exposed_series(scrape(served))
        written = series.get("slipway_inference_log_rows_written_total")
        if written or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    used_labels: set[str] = set()
    for query in panel_queries():
        if query.datasource_type != "prometheus":
            continue
        labels_in_query = selected_label_names(query.text)
        used_labels |= labels_in_query
        for name in selected_metrics(query.text):
            assert name in series, f"{query.panel}: {name} is not in /metrics"
            exported_labels = {label for labels in series[name] for label, _ in labels}
            matched = {label for label in labels_in_query if label in exported_labels}
            assert matched or not labels_in_query, f"{query.panel}: {name} has none of {labels_in_query}"
    exported = {label for samples in series.values() for labels in samples for label, _ in labels}
    assert used_labels <= exported, used_labels - exported
    assert legend_label_names() <= exported, legend_label_names() - exported
    # and the values say what happened
    assert ("kind", "validation") in {pair for labels in series["slipway_errors_total"] for pair in labels}
    assert any(("model_version", "3") in labels for labels in series["slipway_model_info"])


@pytest.fixture(scope="module")
def prometheus(served: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's Prometheus with infra/prometheus/prometheus.yml, the serving target moved to the test server and
    the intervals shortened; stopped afterwards."""
    with running_prometheus(tmp_path_factory.mktemp("prometheus"), [served.url.removeprefix("http://")]) as url:
        yield url


def test_prometheus_scrapes_the_service_and_every_dashboard_query_has_values(
    served: RunningServer, prometheus: str, example_model
):
    # Traffic while Prometheus scrapes: bounded in count and time, stops by itself.
    stop = threading.Event()

    def load() -> None:
        for _ in range(300):
            if stop.is_set():
                return
            send_traffic(served, example_model, good=3)
            time.sleep(0.1)

    sender = threading.Thread(target=load, daemon=True)
    sender.start()
    try:
        deadline = time.monotonic() + 60
        while not [r for r in instant(prometheus, 'up{job="slipway-serving"}') if r["value"][1] == "1"]:
            assert time.monotonic() < deadline, httpx.get(f"{prometheus}/api/v1/targets").text
            time.sleep(0.5)
        time.sleep(6)  # several scrapes with traffic between them, so rates and quantiles have a window
        empty = {}
        for query in panel_queries():
            if query.datasource_type != "prometheus":
                continue
            expr = promql_for_prometheus(query.text, rate_interval="30s")
            result: list[dict[str, Any]] = []
            for _ in range(20):
                result = instant(prometheus, expr)
                if result and all(math.isfinite(float(r["value"][1])) for r in result):
                    break
                time.sleep(0.5)
            else:
                empty[f"{query.panel}: {expr}"] = result
        assert not empty, empty
    finally:
        stop.set()
        sender.join(timeout=30)
