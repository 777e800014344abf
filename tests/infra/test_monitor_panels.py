"""The compose stack's database side on this machine's PostgreSQL: the init script, the MLflow server as compose
runs it, the monitor's records, and the dashboard's SQL panels reading them as Grafana's read-only role.

The test creates its own databases and roles (unique names; dropped afterwards, also on failure) on the PostgreSQL
at SLIPWAY_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres, trust auth).

Proves: infra/postgres/init-databases.sh runs on PostgreSQL 15 and gives each part its own database; the
inference-log role can create and fill its table with the URL compose gives serving and the flows, and the
monitor reads it back; `mlflow server` with compose's command and environment (only the address and names moved)
starts on its database, answers the Host header the other containers send and refuses a foreign one, and stores
artifacts through its proxy; the monitor flow's real recording code (tasks.observe.log_monitor_run on verdicts of
tasks.monitor.decide_action) writes runs that the dashboard's drift-share and actions queries, expanded as
Grafana's PostgreSQL datasource expands them, return; the Grafana role can read them and write nothing.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.infra.assets import PG_INIT, compose, panel_queries, sql_for_postgres
from tests.infra.test_compose import filled_env
from tests.ports import free_port
from tests.postgres import POSTGRES_URL, admin_connection

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.timeout(300)]


@dataclass(frozen=True)
class Databases:
    names: dict[str, str]  # part -> database (and role) name
    passwords: dict[str, str]
    host: str
    port: int

    def url(self, part: str, driver: str = "postgresql+psycopg2", database: str | None = None) -> str:
        name = self.names[part]
        return f"{driver}://{name}:{self.passwords[part]}@{self.host}:{self.port}/{database or name}"


@pytest.fixture(scope="module")
def databases() -> Iterator[Databases]:
    """init-databases.sh run against the test server with unique names; everything it made dropped afterwards."""
    from psycopg2 import sql

    suffix = secrets.token_hex(4)
    names = {part: f"slipway_{part}_{suffix}" for part in ("mlflow", "prefect", "inference_log", "grafana")}
    passwords = {part: secrets.token_urlsafe(16) for part in names}
    admin = make_url(POSTGRES_URL)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PG")},
        "PGHOST": admin.host or "127.0.0.1",
        "PGPORT": str(admin.port or 5432),
        "PGUSER": admin.username or "postgres",
        "POSTGRES_DB": admin.database or "postgres",
        "MLFLOW_DB_NAME": names["mlflow"],
        "PREFECT_DB_NAME": names["prefect"],
        "INFERENCE_LOG_DB_NAME": names["inference_log"],
        "GRAFANA_DB_USER": names["grafana"],
        "MLFLOW_DB_PASSWORD": passwords["mlflow"],
        "PREFECT_DB_PASSWORD": passwords["prefect"],
        "INFERENCE_LOG_DB_PASSWORD": passwords["inference_log"],
        "GRAFANA_DB_PASSWORD": passwords["grafana"],
    }
    if admin.password:
        env["PGPASSWORD"] = admin.password
    connection = admin_connection()
    try:
        ran = subprocess.run(["bash", str(PG_INIT)], env=env, capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        yield Databases(names=names, passwords=passwords, host=env["PGHOST"], port=int(env["PGPORT"]))
    finally:
        with connection.cursor() as cursor:
            for part in ("mlflow", "prefect", "inference_log"):
                cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(names[part])))
            for name in names.values():
                cursor.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        connection.close()


def query(url: str, text: str) -> list[tuple[Any, ...]]:
    import psycopg2

    dsn = url.replace("postgresql+psycopg2://", "postgresql://")
    with psycopg2.connect(dsn, connect_timeout=5) as connection, connection.cursor() as cursor:
        cursor.execute(text)
        rows = cursor.fetchall() if cursor.description else []
    connection.close()
    return rows


def test_each_part_owns_its_database(databases: Databases):
    for part in ("mlflow", "prefect", "inference_log"):
        owner = query(
            databases.url(part),
            f"SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{databases.names[part]}'",
        )
        assert owner == [(databases.names[part],)]
        query(databases.url(part), "CREATE TABLE owned_here (id int); DROP TABLE owned_here")


def test_the_inference_log_url_compose_gives_serving_works_for_writing_and_monitoring(databases: Databases):
    from serving.inference_log import InferenceLog, LoggedRequest
    from tasks.observe import read_live_window

    env = filled_env() | {
        "INFERENCE_LOG_DB_NAME": databases.names["inference_log"],
        "INFERENCE_LOG_DB_PASSWORD": databases.passwords["inference_log"],
    }
    composed = compose(env)["services"]["serving"]["environment"]["SLIPWAY_INFERENCE_LOG_URL"]
    url = str(make_url(composed).set(host=databases.host, port=databases.port).render_as_string(hide_password=False))
    log = InferenceLog(url, flush_interval_s=0.05).start()
    started = datetime.now(UTC) - timedelta(seconds=1)
    log.record_request(
        LoggedRequest(
            request_id="r1",
            model_name="breast-cancer-classifier",
            model_version="3",
            features={"mean_radius": [14.1, 20.2], "size_band": ["medium", "large"]},
            predictions=[0, 1],
            latency_ms=1.5,
        )
    )
    log.close()
    window = read_live_window(url, started, datetime.now(UTC) + timedelta(seconds=1), "3")
    assert len(window) == 2 and list(window["mean_radius"]) == [14.1, 20.2]


@pytest.fixture(scope="module")
def mlflow_server(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` as compose runs it: its command and environment, with the address, database and artifact
    folder moved to this machine."""
    service = compose(filled_env() | {"MLFLOW_DB_PASSWORD": databases.passwords["mlflow"]})["services"]["mlflow"]
    command = list(service["command"])
    command[command.index("--host") + 1] = "127.0.0.1"
    port = free_port()
    command[command.index("--port") + 1] = str(port)
    assert command[0] == "mlflow"
    env = dict(os.environ) | dict(service["environment"])
    store = make_url(env["MLFLOW_BACKEND_STORE_URI"])
    assert (store.host, store.database) == ("postgres", "mlflow")
    env["MLFLOW_BACKEND_STORE_URI"] = store.set(
        host=databases.host, port=databases.port, username=databases.names["mlflow"], database=databases.names["mlflow"]
    ).render_as_string(hide_password=False)
    folder = tmp_path_factory.mktemp("mlflow-server")
    env["MLFLOW_ARTIFACTS_DESTINATION"] = str(folder / "artifacts")
    log_path = folder / "mlflow.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", *command[1:]],
            env=env,
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a fresh database migrates first
        while True:
            assert process.poll() is None, log_path.read_text()[-4000:]
            try:
                if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-4000:]
            time.sleep(0.5)
        yield url
    finally:
        import signal

        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def test_mlflow_answers_the_compose_service_name_and_refuses_a_foreign_host(mlflow_server: str):
    path = f"{mlflow_server}/api/2.0/mlflow/experiments/search?max_results=1"
    assert httpx.get(path, headers={"host": "mlflow:5000"}, timeout=10.0).status_code == 200
    assert httpx.get(path, headers={"host": "localhost:5000"}, timeout=10.0).status_code == 200
    assert httpx.get(path, headers={"host": "attacker.example"}, timeout=10.0).status_code in (400, 403)


@pytest.fixture(scope="module")
def monitor_runs(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two monitor runs recorded through the MLflow server by the monitor flow's own code: a drift that decides a
    retrain, and a healthy window that decides nothing."""
    from tasks import observe
    from tasks.resources import Registry
    from tests.unit.test_monitor import DRIFT, decide

    reports = tmp_path_factory.mktemp("reports")
    # As registry_from_settings builds it: an artifact_root under project.home, which a tracking server overrides.
    registry = Registry(
        tracking_uri=mlflow_server,
        registry_uri=mlflow_server,
        experiment="slipway",
        artifact_root=reports / "mlartifacts",
    )
    drifted = decide(drift=DRIFT, model_version="3")
    healthy = decide(model_version="3")
    assert (drifted.action, healthy.action) == ("retrain", "none")
    run_ids = {}
    for label, verdict in (("drifted", drifted), ("healthy", healthy)):
        report = observe.write_report.fn(reports / label, verdict, None)
        run_ids[label] = observe.log_monitor_run.fn(registry, "breast-cancer-classifier", verdict, report)
    return {"registry": registry, "run_ids": run_ids, "drift_share": DRIFT.share}


def test_monitor_reports_are_stored_through_the_artifact_proxy(monitor_runs: dict[str, Any]):
    registry = monitor_runs["registry"]
    run = registry.client.get_run(monitor_runs["run_ids"]["drifted"])
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert "monitor/verdict.json" in registry.list_artifacts(run.info.run_id, "monitor")


def grafana_sql(panel: str) -> str:
    matches = [q.text for q in panel_queries() if q.panel == panel and q.datasource_type != "prometheus"]
    assert len(matches) == 1, panel
    now = datetime.now(UTC)
    return sql_for_postgres(matches[0], now - timedelta(hours=1), now + timedelta(minutes=5), {"experiment": "slipway"})


def test_the_drift_share_panel_returns_each_judged_runs_share(databases: Databases, monitor_runs: dict[str, Any]):
    rows = query(databases.url("grafana", database=databases.names["mlflow"]), grafana_sql("Drift share"))
    # both runs judged drift (the healthy one with share 0): one point each, in time order
    assert [value for _, value in rows] == [monitor_runs["drift_share"], 0.0]
    assert all(isinstance(time_, datetime) for time_, _ in rows)


def test_the_actions_panel_lists_decided_actions_only(databases: Databases, monitor_runs: dict[str, Any]):
    rows = query(databases.url("grafana", database=databases.names["mlflow"]), grafana_sql("Monitor actions decided"))
    assert [(action, status, version) for _, action, status, version, _ in rows] == [("retrain", "drift", "3")]


def test_the_grafana_role_reads_mlflow_and_writes_nothing(databases: Databases, monitor_runs: dict[str, Any]):
    import psycopg2

    url = databases.url("grafana", database=databases.names["mlflow"])
    assert query(url, "SELECT count(*) FROM runs")[0][0] >= 2
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        query(url, "UPDATE tags SET value = 'none' WHERE key = 'slipway.action'")
    for other in ("inference_log", "prefect"):
        with pytest.raises(psycopg2.OperationalError, match="permission denied"):
            query(databases.url("grafana", database=databases.names[other]), "SELECT 1")
