"""Faults in the closed loop, on real parts: two releases at once, monitoring while serving is down, an inference
log nobody can write, and the secrets of the whole run (train, release twice, deploy, traffic, monitor).

One module, in order, because training and deploying are the slow parts and each step builds on what the last
one left. Serving runs behind HAProxy with an API key; the inference log goes to a PostgreSQL database this module
creates (and drops), reached with a password in its URL (trust auth accepts any), so both secrets flow through
every path a real deployment has.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from tests.flows.test_monitor_flow import serving_url
from tests.ports import free_port
from tests.reliability.conftest import Figures

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), pytest.mark.usefixtures("prefect_harness")]

MODEL = "breast-cancer-classifier"


@dataclass
class Loop:
    home: Path
    api_key: str
    pg_password: str
    log_url: str
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def secrets(self) -> dict[str, str]:
        return {"API key": self.api_key, "database password": self.pg_password}


def _postgres(database: str, statement: str) -> None:
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=3)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement.format(database=database))
    finally:
        connection.close()


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    """A slipway home with an API key and a PostgreSQL inference log (password in the URL), all on loopback."""
    from tasks.deploy import stop_serving

    database = f"slipway_rel_{secrets.token_hex(4)}"
    try:
        _postgres(database, "CREATE DATABASE {database}")
    except Exception as exc:  # psycopg2.OperationalError when nothing listens
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 (user postgres, database test) unreachable: {exc}")
    home = tmp_path_factory.mktemp("loop") / ".slipway"
    state = Loop(
        home=home,
        api_key=f"api-{secrets.token_hex(12)}",
        pg_password=f"pgpw-{secrets.token_hex(12)}",
        log_url="",
    )
    state.log_url = f"postgresql+psycopg2://postgres:{state.pg_password}@127.0.0.1:5432/{database}"
    env = {
        "SLIPWAY__PROJECT__HOME": str(home),
        "BENTOML_HOME": str(home / "bentoml"),
        "SLIPWAY__GATES__LATENCY__P99_MS": "100",  # the wiring, not this loaded machine's speed
        "SLIPWAY__SERVING__PORT": str(free_port()),
        "SLIPWAY__SERVING__WORKERS": "1",
        "SLIPWAY__SERVING__API_KEYS": json.dumps([state.api_key]),
        "SLIPWAY__SERVING__INFERENCE_LOG_URL": state.log_url,
        "SLIPWAY__MONITOR__MIN_ROWS": "100",
        "SLIPWAY__MONITOR__SLO__MIN_REQUESTS": "10",
        "SLIPWAY__MONITOR__SLO__PROBE_REQUESTS": "5",
        "SLIPWAY__MONITOR__RETRAIN": "inline",
        # As `slipway` sets them for its own process (configs.loader.process_environment): MLflow's fluent API then
        # points at this registry even between two flows' Registry.activate() blocks in concurrent threads.
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "MLFLOW_REGISTRY_URI": f"sqlite:///{home / 'mlflow.db'}",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("SLIPWAY__")]:
            patch.delenv(key)
        patch.delenv("SLIPWAY_ENV", raising=False)
        for key, value in env.items():
            patch.setenv(key, value)
        try:
            yield state
        finally:
            stop_serving.fn(home)
            try:
                _postgres(database, "DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            except Exception as exc:
                print(f"could not drop {database}: {exc}")


def registry(home: Path) -> Any:
    from tasks.resources import Registry

    uri = f"sqlite:///{home / 'mlflow.db'}"
    return Registry(uri, uri, "slipway", home / "mlartifacts")


def send(url: str, frame: pd.DataFrame, key: str, batch: int = 20) -> int:
    """POST feature rows with the API key; returns the rows answered 200 (anything else fails the test)."""
    records = json.loads(frame.drop(columns=["malignant"]).to_json(orient="records"))
    with httpx.Client(base_url=url, timeout=30.0, headers={"authorization": f"Bearer {key}"}) as client:
        for start in range(0, len(records), batch):
            answer = client.post("/predict", json={"records": records[start : start + batch]})
            assert answer.status_code == 200, answer.text[:300]
    return len(records)


def _train_runs(home: Path) -> int:
    reg = registry(home)
    experiment = reg.client.get_experiment_by_name("slipway")
    return len(reg.client.search_runs([experiment.experiment_id])) if experiment else 0


# --- two releases at once ---------------------------------------------------------------------------------------


@pytest.mark.reliability("concurrent-releases")
def test_two_releases_of_one_model_at_once_are_serialized_and_both_recorded(loop: Loop, figures: Figures) -> None:
    from flows.release import release
    from flows.train import train_flow
    from tasks.registry import read_history

    # Given two logged training runs of the model
    runs = [train_flow(release_after=False).run_id for _ in range(2)]  # type: ignore[union-attr]
    # When both are released at the same moment, from two threads
    results: dict[int, Any] = {}
    barrier = threading.Barrier(2)

    def go(index: int) -> None:
        barrier.wait()
        started = time.monotonic()
        try:
            results[index] = release(run_id=runs[index])
        except BaseException as exc:
            results[index] = exc
        loop.notes[f"release{index}_s"] = time.monotonic() - started

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=800)
    figures.tried = "two `release` flows of the same model started together (two threads, one Prefect API)"
    figures.times = 2
    # Then both completed and registered a version each
    failed = {i: r for i, r in results.items() if isinstance(r, BaseException)}
    assert not failed, failed
    versions = sorted(int(r.version) for r in results.values())
    assert versions == [1, 2]
    # And they ran one after the other: the second version was registered after the first was promoted,
    reg = registry(loop.home)
    history = [e for e in read_history(reg, MODEL) if e.action == "release"]
    assert [e.status for e in history] == ["done", "done"], history
    second = reg.version(MODEL, "2")
    first_promoted = history[0].at.timestamp() * 1000
    # and the history is one chain: the second move starts where the first one left the champion
    champion_moves = [next(m for m in e.moves if m.alias == "champion") for e in history]
    assert champion_moves[0].to_version == "1" and champion_moves[1].from_version == "1"
    assert champion_moves[1].to_version == "2" == reg.aliases(MODEL)["champion"]
    figures.add(
        versions_registered=2,
        history_entries=len(history),
        champion_chain=" -> ".join(["none", *[m.to_version for m in champion_moves]]),
        second_registered_after_first_promoted_ms=round(second.creation_timestamp - first_promoted),
        release_seconds=f"{loop.notes['release0_s']:.0f} and {loop.notes['release1_s']:.0f}",
    )
    assert second.creation_timestamp >= first_promoted


# --- every server on loopback -----------------------------------------------------------------------------------


@pytest.mark.reliability("loopback")
def test_every_server_slipway_starts_listens_on_loopback_only(loop: Loop, figures: Figures) -> None:
    import psutil

    from configs.settings import ServingSettings
    from flows.deploy import deploy
    from tasks import stack

    # Given the defaults: serving.host, and the host `slipway up` gives the Prefect server and the MLflow UI
    assert ServingSettings().host == "127.0.0.1"
    stack_host = getattr(stack, "HOST", None)
    assert stack_host in (None, "127.0.0.1")
    # When the champion is deployed with the default host
    result = deploy()
    pids: set[int] = set()
    for root in (result.state.front.pid, result.state.backend.pid):
        process = psutil.Process(root)
        pids |= {process.pid, *(child.pid for child in process.children(recursive=True))}
    listeners = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    addresses = sorted({f"{c.laddr.ip}:{c.laddr.port}" for c in listeners})
    figures.tried = (
        "listening sockets of a deployed champion (HAProxy front, `bentoml serve` and its workers); the defaults "
        "of serving.host and of `slipway up` (Prefect server, MLflow UI)"
    )
    figures.times = len(listeners)
    figures.add(
        listening=", ".join(addresses),
        not_loopback=sum(not ipaddress.ip_address(c.laddr.ip).is_loopback for c in listeners),
        serving_host_default=ServingSettings().host,
        stack_host=stack_host or "n/a",
    )
    # Then every listening socket of them is on 127.0.0.1
    assert len(listeners) >= 2, addresses
    assert all(ipaddress.ip_address(c.laddr.ip).is_loopback for c in listeners), addresses


# --- monitoring while serving is down ---------------------------------------------------------------------------


@pytest.mark.reliability("monitor-serving-down")
def test_monitoring_while_serving_is_down_says_so_and_never_retrains(loop: Loop, figures: Figures) -> None:
    from examples.breast_cancer import load_data
    from examples.closed_loop import shifted_traffic, wait_logged
    from flows.deploy import deploy
    from flows.monitor import monitor_flow
    from tasks.deploy import _backend_pids, read_state, serving_status

    home = loop.home
    reg = registry(home)
    deploy()
    # Given traffic that drifted (only malignant tumours), logged
    start = datetime.now(UTC)
    sent = send(serving_url(home), shifted_traffic(load_data(), 300, seed=4), loop.api_key)
    assert wait_logged(loop.log_url, start, sent) >= sent
    # When every serving process dies (kill -9: front and backend) and the monitor runs
    state = read_state(home)
    assert state is not None
    os.killpg(state.front.pid, signal.SIGKILL)
    for pid in _backend_pids(state.backend):  # the arbiter and its workers (each in a session of its own)
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while serving_status(home).condition != "stale" and time.monotonic() < deadline:
        time.sleep(0.5)
    before = (reg.aliases(MODEL), len(reg.client.search_model_versions(f"name='{MODEL}'")), _train_runs(home))
    verdict = monitor_flow(since=start)
    after = (reg.aliases(MODEL), len(reg.client.search_model_versions(f"name='{MODEL}'")), _train_runs(home))
    figures.tried = "monitor run after SIGKILL of HAProxy and `bentoml serve`, with 300 drifted rows in the window"
    figures.times = 1
    figures.add(
        verdict=f"{verdict.status} -> {verdict.action}",
        guardrail=verdict.guardrail or "none",
        rows_in_window=verdict.rows,
        new_versions=after[1] - before[1],
        new_training_runs=after[2] - before[2],
    )
    # Then the verdict says serving is unreachable, nothing is retrained, and the registry is as it was
    assert verdict.status == "serving_unreachable", verdict.reason
    assert verdict.action in ("none", "blocked"), verdict.reason
    assert "did not answer" in verdict.reason
    assert after == before


# --- an inference log nobody can write --------------------------------------------------------------------------


@pytest.mark.reliability("log-unwritable")
def test_an_unwritable_inference_log_costs_no_request_and_the_monitor_reports_the_loss(
    loop: Loop, figures: Figures, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from examples.breast_cancer import load_data
    from flows.deploy import deploy
    from flows.monitor import monitor_flow
    from tasks.monitor import inference_log_loss

    # Given serving whose inference log points below a regular file (no write can succeed, even as root)
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("SLIPWAY__SERVING__INFERENCE_LOG_URL", f"sqlite:///{tmp_path}/not-a-folder/log.db")
    deploy()
    url = serving_url(loop.home)
    # When traffic arrives
    rows = send(url, load_data().sample(n=200, random_state=7), loop.api_key)
    deadline = time.monotonic() + 60
    loss = None
    while time.monotonic() < deadline:
        loss = inference_log_loss(httpx.get(f"{url}/metrics", timeout=10.0).text)
        if loss is not None and loss.rows_dropped >= rows:
            break
        time.sleep(0.5)
    # Then every request was answered (send asserts 200), and the loss is counted in /metrics
    assert loss is not None and loss.rows_dropped == rows and loss.rows_written == 0, loss
    # And the monitor reports it: in the verdict, its reason, the report and the MLflow run
    verdict = monitor_flow(window_minutes=5)
    assert verdict.inference_log is not None and verdict.inference_log.rows_dropped == rows
    assert "DROPPED" in verdict.reason and "write_failed" in verdict.reason
    report = Path(verdict.report_path or "")
    folder = report if report.is_dir() else report.parent
    assert f"{rows} rows DROPPED" in (folder / "verdict.md").read_text()
    reg = registry(loop.home)
    experiment = reg.client.get_experiment_by_name("slipway-monitor")
    run = reg.client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])[0]
    assert run.data.metrics["inference_log_rows_dropped"] == rows
    figures.tried = "200 rows in 10 requests to serving whose SQLite inference log lies below a regular file"
    figures.times = 10
    figures.add(
        requests_failed=0,
        rows_dropped_in_metrics=loss.rows_dropped,
        rows_dropped_in_monitor_verdict=verdict.inference_log.rows_dropped,
        verdict=f"{verdict.status} -> {verdict.action}",
    )


# --- the secrets of the whole run -------------------------------------------------------------------------------


@pytest.mark.reliability("secrets-scan")
def test_no_configured_secret_appears_in_runs_logs_tags_artifacts_or_files(loop: Loop, figures: Figures) -> None:
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # send the logs still queued in this process
    time.sleep(2.0)
    places: dict[str, list[str]] = {}

    def add(where: str, value: Any) -> None:
        places.setdefault(where, []).append(json.dumps(value, default=str) if not isinstance(value, str) else value)

    with get_client(sync_client=True) as client:
        offset = 0
        while batch := client.read_flow_runs(limit=200, offset=offset):
            for run in batch:
                add("Prefect flow-run parameters", run.parameters)
                add("Prefect flow-run state messages", run.state.message if run.state else "")
            offset += len(batch)
        offset = 0
        while batch := client.read_task_runs(limit=200, offset=offset):
            for task_run in batch:
                add("Prefect task-run inputs", task_run.task_inputs)
            offset += len(batch)
        offset = 0
        while logs := client.read_logs(limit=200, offset=offset):
            for entry in logs:
                add("Prefect logs", entry.message)
            offset += len(logs)
        offset = 0
        while artifacts := client.read_artifacts(limit=200, offset=offset):
            for artifact in artifacts:
                add("Prefect artifacts", [artifact.key, artifact.description, artifact.data])
            offset += len(artifacts)
    reg = registry(loop.home)
    client_ml = reg.client
    for experiment in client_ml.search_experiments():
        for run in client_ml.search_runs([experiment.experiment_id], max_results=1000):
            add("MLflow run params", run.data.params)
            add("MLflow run tags", run.data.tags)
    for model in client_ml.search_registered_models():
        add("MLflow registered-model tags", model.tags)
        for version in client_ml.search_model_versions(f"name='{model.name}'"):
            add("MLflow model-version tags", version.tags)
    for path in sorted(p for p in loop.home.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000):
        add(
            "files under the slipway home (logs, reports, state, MLflow DB, Bento store)",
            path.read_bytes().decode("latin-1"),
        )
    found = [
        f"{name} in {where}"
        for where, values in places.items()
        for name, secret in loop.secrets.items()
        if any(secret in value for value in values)
    ]
    counts = {where: len(values) for where, values in places.items()}
    figures.tried = (
        "scan after train, two releases, deploys, keyed traffic and two monitor runs for the API key and the "
        "inference-log database password: " + ", ".join(f"{where} ({n})" for where, n in counts.items())
    )
    figures.times = sum(counts.values())
    figures.add(secrets_found=len(found), places_scanned=len(counts))
    assert counts.get("Prefect logs", 0) > 0 and counts.get("MLflow model-version tags", 0) > 0
    assert not found, found
