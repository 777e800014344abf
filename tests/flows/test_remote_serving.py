"""serving.target remote on real parts: serving that slipway does not run, reached by URL, moved by a command.

"The platform" here is a second slipway configuration on the same machine: its own `slipway deploy` (bentoml
serve behind HAProxy) plays the Kubernetes Deployment, and the control side's deploy command is that CLI,
exactly as an operator would give `kubectl set image ...` or `ssh host slipway deploy {model_version}`. The
control side never reads the platform's local state: only the URL, the registry and the command.

Proves: a promotion made in the MLflow UI (an alias moved with MlflowClient) reaches remote serving through the
sync flow, which runs the command with the version filled in and waits until the URL reports that version; a
failing command names its exit code and output and leaves serving and the alias as they were; the monitor reads
the served version from the URL and its latency from a real Prometheus summed over two serving pods.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from examples.closed_loop import feature_records, reference_traffic, send
from tasks.deploy import serving_status, stop_serving
from tasks.errors import ServingError
from tasks.registry import read_history
from tasks.resources import Registry
from tests.ports import free_port
from tests.prometheus import instant, running_prometheus
from tests.serving.test_bento import serve_command, serve_env, stop_server, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness"), pytest.mark.timeout(600)]

MODEL = "breast-cancer-classifier"


@pytest.fixture
def platform(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The environment both sides share (one MLflow store and BentoML store under `home`, the harness's Prefect
    API for the deploy command's flow run); yields the port the platform serves on; stops its serving after."""
    from prefect.settings import PREFECT_API_URL

    port = free_port()
    settings = {
        "SLIPWAY__GATES__LATENCY__P99_MS": "100",
        "SLIPWAY__SERVING__PORT": str(port),
        "SLIPWAY__SERVING__WORKERS": "1",
        "SLIPWAY__MONITOR__MIN_ROWS": "100000",  # latency and version are under test here, not drift
        "SLIPWAY__MONITOR__SLO__MIN_REQUESTS": "10",
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    try:
        yield port
    finally:
        stop_serving.fn(home)


def remote_config(path: Path, port: int, command: list[str], **extra: object) -> str:
    """A config overlay that makes serving remote: the URL and the command, nothing about local processes."""
    remote = {"url": f"http://127.0.0.1:{port}", "deploy_command": command, "settle_scrapes": 3} | extra
    path.write_text(yaml.safe_dump({"serving": {"target": "remote", "remote": remote}}))
    return str(path)


def platform_deploy() -> list[str]:
    """The platform's own deploy: the CLI of a configuration whose serving is local (no config file given)."""
    return [sys.executable, "-m", "flows.cli", "deploy", "{model_version}"]


def answered_version(port: int) -> str:
    from examples.breast_cancer import load_data

    body = {"records": feature_records(load_data().head(1), "malignant")}
    answer = httpx.post(f"http://127.0.0.1:{port}/predict", json=body, timeout=10.0)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["model_version"])


def registry(home: Path) -> Registry:
    uri = f"sqlite:///{home / 'mlflow.db'}"
    return Registry(uri, uri, "slipway", home / "mlartifacts")


def test_a_promotion_in_the_mlflow_ui_reaches_remote_serving(home: Path, platform: int, tmp_path: Path) -> None:
    from examples.breast_cancer import load_data
    from flows.monitor import monitor_flow
    from flows.sync import sync_flow
    from flows.train import train_flow

    port = platform
    first = train_flow()
    second = train_flow()
    assert second.promotion is not None and second.promotion.move_champion, "the retrain is the champion"
    # The platform's first rollout, done by its own tooling: serving v2, the champion.
    subprocess.run([sys.executable, "-m", "flows.cli", "deploy"], check=True, timeout=300)
    assert answered_version(port) == second.version

    control = remote_config(tmp_path / "remote.yaml", port, platform_deploy())
    assert sync_flow(config_file=control).detail.endswith("nothing to do")

    # Someone rolls back in the MLflow UI: the alias moves, nothing else.
    registry(home).client.set_registered_model_alias(MODEL, "champion", first.version)
    result = sync_flow(config_file=control)
    assert result.manual_move_recorded and result.deployed, result.detail
    assert (result.served_before, result.served_now) == (second.version, first.version)
    assert answered_version(port) == first.version
    last = read_history(registry(home), MODEL)[-1]
    assert last.action == "manual" and last.moves[0].to_version == first.version
    assert not sync_flow(config_file=control).deployed  # nothing left to do

    # A deploy command that fails: named exit code and output; serving and the alias stay as they were.
    registry(home).client.set_registered_model_alias(MODEL, "champion", second.version)
    broken = remote_config(
        tmp_path / "broken.yaml",
        port,
        [sys.executable, "-c", "import sys; print('cluster says no to {bento_tag}'); sys.exit(3)"],
    )
    with pytest.raises(ServingError, match=r"exited with 3(.|\n)*cluster says no to breast-cancer-classifier"):
        sync_flow(config_file=broken)
    assert answered_version(port) == first.version
    assert registry(home).aliases(MODEL)["champion"] == second.version

    # The monitor of remote serving: the version from the URL, latency from Prometheus over two pods (the
    # platform's front and a second `bentoml serve` of the same Bento).
    state = serving_status(home).state
    assert state is not None
    pod_port = free_port()
    pod_log = tmp_path / "pod2.log"
    with pod_log.open("wb") as log:
        pod = subprocess.Popen(
            serve_command(state.backend.bento_tag, pod_port),
            env=serve_env(home / "bentoml", SLIPWAY_WORKERS="1"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(f"http://127.0.0.1:{pod_port}", pod, pod_log, 120)
        pods = [f"127.0.0.1:{port}", f"127.0.0.1:{pod_port}"]
        data = load_data()
        for target in pods:  # one request each, so both series exist before Prometheus' first scrape
            send(f"http://{target}", data.head(1), batch=1)
        with running_prometheus(tmp_path / "prometheus", pods) as prometheus:
            series = 'bentoml_service_request_duration_seconds_count{endpoint="/predict"}'
            count = f"sum({series})"
            wait_for(lambda: len(instant(prometheus, f"count by (instance) ({series})")) == 2, "both pods scraped")
            time.sleep(2.5)  # a few flat samples first, so increase() sees where the counters started
            send(f"http://{pods[0]}", reference_traffic(data, 30, seed=1), batch=1)
            send(f"http://{pods[1]}", reference_traffic(data, 20, seed=2), batch=1)
            wait_for(lambda: value(instant(prometheus, count)) >= 52, "Prometheus saw all 52 requests")
            time.sleep(2.5)
            monitored = remote_config(
                tmp_path / "monitored.yaml",
                port,
                platform_deploy(),
                prometheus_url=prometheus,
                prometheus_selector='job="slipway-serving"',
            )
            verdict = monitor_flow(config_file=monitored, window_minutes=1.0)
    finally:
        stop_server(pod)
    assert verdict.model_version == first.version
    assert verdict.latency is not None
    # 50 in the window. Prometheus' increase() scales the increase it sampled (about 10 s here) by up to half a
    # scrape interval at each end, so up to ~25% more with 1 s scrapes of so short a history (a 15 s scrape under
    # an hour's window: under 1%); one pod alone saw at most 31, so 48 or more is the sum over both.
    assert 48 <= verdict.latency.requests <= 70, verdict.latency
    assert verdict.latency.errors == 0
    # The inference-log counters come from Prometheus too: the platform's pod logged its 33 requests, none lost.
    assert verdict.inference_log is not None and verdict.inference_log.rows_dropped == 0
    assert verdict.inference_log.rows_written >= 31, verdict.inference_log
    assert verdict.status == "insufficient_data" and verdict.action == "none", verdict.reason


def value(result: list[dict[str, object]]) -> float:
    point = result[0]["value"] if result else None
    return float(point[1]) if isinstance(point, list) else 0.0


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.5)
