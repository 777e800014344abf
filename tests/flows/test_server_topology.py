"""`slipway up --profile server`: the production topology on this machine, without containers.

The integration test creates its own databases on the machine's PostgreSQL (127.0.0.1:5432, trust auth; another
server through SLIPWAY_TEST_POSTGRES_URL), starts the MLflow server (PostgreSQL store, proxied artifacts) and the
Prefect server (PostgreSQL) on free ports, a process worker and the deployments of infra/prefect.yaml, runs the
release as a deployment run the worker picks up, checks the registry through the MLflow server and the champion
on the served endpoint, then stops everything and drops its databases, also when it fails.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from configs import load_config
from flows.cli import app
from tasks import stack
from tests.flows.test_stack import gone
from tests.ports import free_port
from tests.postgres import POSTGRES_URL, admin_connection

runner = CliRunner()
TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def processes_of(home: Path) -> list[int]:
    """Live processes whose environment names the home: every one the stack, serving or a flow run started."""
    needle = str(home).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes() and not gone(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def query(database_url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg2

    with psycopg2.connect(database_url, connect_timeout=5) as connection, connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    connection.close()
    return rows


@pytest.fixture
def databases() -> Iterator[dict[str, str]]:
    """Names for MLflow's and Prefect's databases, unique to this test; dropped afterwards, also on failure
    (WITH (FORCE): a server that was killed may leave its connections behind for a moment)."""
    from psycopg2 import sql

    suffix = secrets.token_hex(4)
    names = {"mlflow": f"slipway_test_{suffix}_mlflow", "prefect": f"slipway_test_{suffix}_prefect"}
    admin_connection().close()  # fail now, naming the server, when there is no PostgreSQL
    try:
        yield names
    finally:
        connection = admin_connection()
        with connection.cursor() as cursor:
            for name in names.values():
                cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            cursor.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (list(names.values()),))
            left = cursor.fetchall()
        connection.close()
        assert not left, f"databases not dropped: {left}"


@pytest.fixture
def server_env(home: Path, databases: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The server profile on free ports with this test's databases; os.environ restored afterwards."""
    ports = {"prefect": free_port(), "mlflow": free_port(), "serving": free_port()}
    monkeypatch.setenv("SLIPWAY__STACK__PREFECT_PORT", str(ports["prefect"]))
    monkeypatch.setenv("SLIPWAY__STACK__MLFLOW_PORT", str(ports["mlflow"]))
    monkeypatch.setenv("SLIPWAY__SERVING__PORT", str(ports["serving"]))
    monkeypatch.setenv("SLIPWAY__STACK__POSTGRES_URL", POSTGRES_URL)
    monkeypatch.setenv("SLIPWAY__STACK__MLFLOW_DATABASE", databases["mlflow"])
    monkeypatch.setenv("SLIPWAY__STACK__PREFECT_DATABASE", databases["prefect"])
    monkeypatch.setenv("SLIPWAY__STACK__STOP_GRACE_S", "10")  # `down` waits this long for a run to finish
    # An overlay, as `up --config` passes it on: the deployments carry it as their config_file parameter.
    overlay = home.parent / "server-overlay.yaml"
    overlay.write_text("project:\n  name: slipway-server-test\n", encoding="utf-8")
    saved = dict(os.environ)
    yield {"ports": ports, "databases": databases, "overlay": overlay}
    os.environ.clear()
    os.environ.update(saved)


def database_url(name: str) -> str:
    return POSTGRES_URL.rsplit("/", 1)[0] + "/" + name


def wait_for_run(api: httpx.Client, run_id: str, timeout_s: float) -> dict[str, Any]:
    """The flow run once it reached a terminal state; fails naming the state it is stuck in after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = api.get(f"/flow_runs/{run_id}").json()
        if run["state"]["type"] in TERMINAL:
            return dict(run)
        assert time.monotonic() < deadline, f"flow run {run_id} is still {run['state']['type']} after {timeout_s} s"
        time.sleep(2)


def run_logs(api: httpx.Client, run_id: str) -> str:
    logs = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}).json()
    return "\n".join(f"{entry['timestamp']} {entry['message']}" for entry in logs)


def test_a_password_in_the_postgres_url_is_refused_naming_the_field() -> None:
    # Given a PostgreSQL URL that carries a password, when the config loads, then it fails naming the field
    from configs import ConfigError

    with pytest.raises(ConfigError, match=r"stack\.postgres_url: .*must not hold a password") as raised:
        load_config(environ={"SLIPWAY__STACK__POSTGRES_URL": "postgresql://postgres:s3cret@127.0.0.1/postgres"})
    assert "s3cret" not in str(raised.value)


def test_the_server_profile_points_every_client_at_the_mlflow_server(home: Path) -> None:
    # Given the server profile, then clients use the MLflow server over HTTP; an explicit tracking URI still wins
    server = {"SLIPWAY__STACK__PROFILE": "server", "SLIPWAY__STACK__MLFLOW_PORT": "5123"}
    assert load_config(environ=server).settings.tracking_uri == "http://127.0.0.1:5123"
    assert load_config(environ=server).settings.registry_uri == "http://127.0.0.1:5123"
    elsewhere = {**server, "SLIPWAY__MLFLOW__TRACKING_URI": "http://mlflow.internal:5000"}
    assert load_config(environ=elsewhere).settings.tracking_uri == "http://mlflow.internal:5000"
    assert load_config(environ={}).settings.tracking_uri.startswith("sqlite:///")


def test_the_server_specs_keep_the_password_in_the_environment_only(home: Path) -> None:
    # Given the server profile with a PostgreSQL password from the environment
    settings = load_config(
        environ={
            "SLIPWAY__PROJECT__HOME": str(home),
            "SLIPWAY__STACK__PROFILE": "server",
            "SLIPWAY__STACK__POSTGRES_URL": "postgresql://slipway@db.internal:6432/postgres",
            "SLIPWAY__STACK__POSTGRES_PASSWORD": "s3cret",
            "SLIPWAY__STACK__MLFLOW_DATABASE": "ml",
            "SLIPWAY__STACK__PREFECT_DATABASE": "pf",
        }
    ).settings
    prefect, mlflow = stack.servers(settings)
    worker = stack.prefect_worker(settings, "slipway", env_name="prod")
    # Then the servers get it as PGPASSWORD, never in a command line or a URL, each on its own database
    assert mlflow.env["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg2://slipway@db.internal:6432/ml"
    assert "--backend-store-uri" not in mlflow.argv and "--default-artifact-root" not in mlflow.argv
    assert mlflow.argv[mlflow.argv.index("--artifacts-destination") + 1] == (home / "mlartifacts").as_uri()
    assert prefect.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == "postgresql+asyncpg://slipway@db.internal:6432/pf"
    for spec in (mlflow, prefect):
        assert spec.env["PGPASSWORD"] == "s3cret"
        assert not any("s3cret" in arg for arg in spec.argv)
    # And the worker's runs learn the MLflow server, the home and the env from its environment
    assert worker.env["SLIPWAY__MLFLOW__TRACKING_URI"] == f"http://127.0.0.1:{settings.stack.mlflow_port}"
    assert worker.env["SLIPWAY__PROJECT__HOME"] == str(home) and worker.env["SLIPWAY_ENV"] == "prod"
    assert worker.argv[worker.argv.index("--pool") + 1] == "slipway" and "PGPASSWORD" not in worker.env


def test_an_unreachable_postgres_is_named_with_its_setting(home: Path) -> None:
    # Given nothing listening where stack.postgres_url points, when `up` would create the databases
    settings = load_config(
        environ={
            "SLIPWAY__STACK__PROFILE": "server",
            "SLIPWAY__STACK__POSTGRES_URL": f"postgresql://u@127.0.0.1:{free_port()}/x",
        }
    ).settings
    # Then it fails naming the URL and the setting
    with pytest.raises(
        stack.StackError,
        match=r"cannot connect to PostgreSQL at postgresql://u@127\.0\.0\.1:\d+/x \(stack\.postgres_url",
    ):
        stack.ensure_databases(settings)


def sleeper(home: Path, name: str, code: str) -> stack.ComponentSpec:
    import sys

    return stack.ComponentSpec(
        name=name,
        title=f"{name} process",
        argv=(sys.executable, "-c", code),
        env=dict(os.environ),
        cwd=home,
        port=None,
        port_setting=None,
        url="http://127.0.0.1:1",
        health_url=None,
        ready_timeout_s=30,
        timeout_setting=f"stack.{name}_timeout_s",
    )


def test_a_worker_and_its_flow_runs_in_their_own_process_group_stop_together(home: Path) -> None:
    # Given a stack process that starts a child in a session of its own, as a Prefect worker starts a flow run
    code = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\n"
        "time.sleep(300)\n"
    )
    launch = stack.start_component(home, sleeper(home, "worker", code), "server")
    deadline = time.monotonic() + 30
    while len(stack.stack_status(home)[0].pids) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    # Then the child counts as the worker's although it is in another process group
    pids = stack.stack_status(home)[0].pids
    assert launch.process.pid in pids and len(pids) == 2, pids
    child = next(pid for pid in pids if pid != launch.process.pid)
    assert os.getpgid(child) != launch.process.pid
    # And a stack of the other profile cannot start next to it
    with pytest.raises(stack.StackError, match=r"the server stack runs in .*`slipway down` stops it"):
        stack.check_profile(home, "embedded")
    stack.check_profile(home, "server")
    # When it is stopped, then the child goes with it, although it hangs from init once the worker is gone
    assert stack.stop_component(home, "worker", grace_s=5.0) is not None
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(gone(pid) for pid in pids)
    assert stack.read_stack(home).processes == {}


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.timeout(1800)
def test_server_profile_runs_the_release_through_a_worker(home: Path, server_env: dict[str, Any]) -> None:
    ports, databases, overlay = server_env["ports"], server_env["databases"], server_env["overlay"]
    settings = load_config().settings
    name, target = settings.model.name, settings.data.target
    prefect_url, mlflow_url = f"http://127.0.0.1:{ports['prefect']}", f"http://127.0.0.1:{ports['mlflow']}"
    timings: dict[str, float] = {}
    started = time.monotonic()
    assert not processes_of(home)
    try:
        # Given no databases yet and a fresh project home
        # When `slipway up --profile server` runs
        up = runner.invoke(app, ["up", "--profile", "server", "--config", str(overlay)])
        timings["up"] = time.monotonic() - started
        assert up.exit_code == 0, up.output
        # Then it created both databases, and runs the Prefect server, the MLflow server and a worker (no champion
        # yet, so nothing serves and it says why)
        for which, database in databases.items():
            assert f"created  {which} database {database_url(database)}" in up.output, up.output
        assert "has no champion" in up.output, up.output
        state = stack.read_stack(home)
        assert state.profile == "server" and set(state.processes) == {"prefect", "mlflow", "worker"}
        assert set(state.databases) == {"mlflow", "prefect"}
        assert state.databases == {which: database_url(database) for which, database in databases.items()}

        with httpx.Client(base_url=f"{prefect_url}/api", timeout=30, trust_env=False) as api:
            # And the Prefect API lists infra/prefect.yaml's deployments on its work pool, with a worker polling it
            declared = stack.declared_deployments()
            deployments = {d["name"]: d for d in stack.list_deployments(f"{prefect_url}/api", declared.names)}
            assert set(deployments) == set(declared.names) == {"monitor", "sync", "train"}
            assert {d["work_pool_name"] for d in deployments.values()} == {declared.work_pool}
            for deployment in deployments.values():
                assert deployment["parameters"] == {"env": None, "config_file": str(overlay)}, deployment
            workers = api.post(f"/work_pools/{declared.work_pool}/workers/filter", json={}).json()
            assert [w["name"] for w in workers] == [stack.worker_name()], workers
            # (the scheduled monitor and sync would start runs every minute on this shared 2-core machine while
            # the release runs; they are paused: this test is about the release going through the worker)
            for schedule_name in ("monitor", "sync"):
                paused = api.patch(f"/deployments/{deployments[schedule_name]['id']}", json={"paused": True})
                assert paused.status_code == 204, paused.text

            # When the release runs as a deployment run: `train`, whose run trains and then runs the release flow
            # as a subflow (the monitor's retrain starts exactly this)
            mark = time.monotonic()
            created = api.post(f"/deployments/{deployments['train']['id']}/create_flow_run", json={}).json()
            run = wait_for_run(api, created["id"], timeout_s=600)
            timings["train+release run"] = time.monotonic() - mark
            worker_log = (home / "logs" / "worker.log").read_text(errors="replace")
            assert run["state"]["type"] == "COMPLETED", (
                f"{run['state']}\n--- run logs\n{run_logs(api, created['id'])}\n--- worker log\n{worker_log[-4000:]}"
            )
            # Then the worker of the pool picked it up (the server has no other way to start it)
            assert run["work_pool_name"] == declared.work_pool and created["id"] in worker_log
            assert run["parameters"] == {"env": None, "config_file": str(overlay)}
            # And its subflow run is the release, completed
            children = api.post(
                "/flow_runs/filter", json={"flow_runs": {"parent_flow_run_id": {"any_": [created["id"]]}}}
            ).json()
            flows = {api.get(f"/flows/{child['flow_id']}").json()["name"]: child for child in children}
            assert "release" in flows and flows["release"]["state"]["type"] == "COMPLETED", children
            paused_runs = api.post(
                "/flow_runs/filter",
                json={"flow_runs": {"deployment_id": {"any_": [deployments[n]["id"] for n in ("monitor", "sync")]}}},
            ).json()
            print(f"runs of the paused deployments: {[(r['name'], r['state']['type']) for r in paused_runs]}")

        # And the registry, read through the MLflow server, has the version with its champion alias and its
        # artifacts on the proxy (mlflow-artifacts:/, stored under <home>/mlartifacts by the server)
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
        model = client.get_registered_model(name)
        champion = model.aliases.get("champion")
        assert champion is not None, model.aliases
        version = client.get_model_version(name, champion)
        mlflow_run = client.get_run(version.run_id)
        assert mlflow_run.info.artifact_uri.startswith("mlflow-artifacts:"), mlflow_run.info.artifact_uri
        download_uri = client.get_model_version_download_uri(name, champion)
        assert download_uri.startswith("mlflow-artifacts:"), (version.source, download_uri)
        holdout_path = Path(client.download_artifacts(version.run_id, "slipway/holdout.parquet", str(home / "dl")))
        stored = list((home / "mlartifacts").rglob("holdout.parquet"))
        assert len(stored) == 1 and stored[0].read_bytes() == holdout_path.read_bytes()
        # And the stores are PostgreSQL: the version and the alias are rows of MLflow's database, the run a row
        # of Prefect's; no SQLite store was made under the home
        rows = query(
            database_url(databases["mlflow"]),
            "SELECT alias, version FROM registered_model_aliases WHERE name = %s",
            (name,),
        )
        assert ("champion", int(champion)) in rows, rows
        assert query(
            database_url(databases["prefect"]), "SELECT count(*) FROM flow_run WHERE id = %s", (run["id"],)
        ) == [(1,)]
        assert not (home / "mlflow.db").exists() and not (home / "prefect" / "prefect.db").exists()

        # When `slipway up --profile server` runs again, then what runs is left alone and the champion is served
        mark = time.monotonic()
        again = runner.invoke(app, ["up", "--profile", "server", "--config", str(overlay)])
        timings["up again (serving)"] = time.monotonic() - mark
        assert again.exit_code == 0, again.output
        assert again.output.count("left alone") == 4, again.output  # 3 processes and the registered deployments
        assert {n: p.pid for n, p in stack.read_stack(home).processes.items()} == {
            n: p.pid for n, p in state.processes.items()
        }
        import pandas as pd

        record = json.loads(pd.read_parquet(holdout_path).drop(columns=[target]).head(1).to_json(orient="records"))
        with httpx.Client(timeout=30, trust_env=False) as http:
            answer = http.post(f"http://127.0.0.1:{ports['serving']}/predict", json={"records": record})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_name"] == name and answer.json()["model_version"] == champion

        # And `slipway status` shows the profile, its databases and every process alive
        shown = runner.invoke(app, ["status", "--json"])
        assert shown.exit_code == 0, shown.output
        status = json.loads(shown.output)
        assert status["condition"] == "serving" and status["stack_profile"] == "server"
        assert {p["process"]["name"]: p["alive"] for p in status["stack"]} == {
            "prefect": True,
            "mlflow": True,
            "worker": True,
        }
        assert databases["mlflow"] in status["stack_databases"]["mlflow"]

        # Given a run in progress on the worker (another train run, in a process group of its own)
        with httpx.Client(base_url=f"{prefect_url}/api", timeout=30, trust_env=False) as api:
            busy = api.post(f"/deployments/{deployments['train']['id']}/create_flow_run", json={}).json()
            deadline = time.monotonic() + 300
            while api.get(f"/flow_runs/{busy['id']}").json()["state"]["type"] != "RUNNING":
                assert time.monotonic() < deadline, "the second train run did not start within 300 s"
                time.sleep(0.5)
        worker = next(entry for entry in stack.stack_status(home) if entry.process.name == "worker")
        run_pids = [pid for pid in worker.pids if os.getpgid(pid) != worker.process.pid]
        assert run_pids, f"the run's processes are not found with the worker: {worker.pids}"
        # When `slipway down` runs, then every process, the run's included, is gone
        pids = {pid for entry in stack.stack_status(home) for pid in entry.pids}
        mark = time.monotonic()
        down = runner.invoke(app, ["down"])
        timings["down"] = time.monotonic() - mark
        assert down.exit_code == 0, down.output
        assert down.output.count("stopped") >= 4, down.output  # worker, serving (front, backend), MLflow, Prefect
        deadline = time.monotonic() + 10
        while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(gone(pid) for pid in pids), [pid for pid in pids if not gone(pid)]
        assert not (home / stack.STACK_FILE).exists()
        # (serving included: no process anywhere still has this home in its environment)
        assert not processes_of(home), [Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in processes_of(home)]
    finally:
        runner.invoke(app, ["down"])  # idempotent: stops whatever an assertion above left running
        timings["total"] = time.monotonic() - started
        print("timings: " + ", ".join(f"{what} {seconds:.1f} s" for what, seconds in timings.items()))
