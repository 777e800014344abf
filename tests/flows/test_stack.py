"""`slipway up` / `status` / `down`: the Prefect server, the MLflow UI and the deployments as a local service."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from configs import load_config
from flows.cli import app
from flows.serve import deployment_specs, to_deployments
from tasks import stack
from tasks.stack import StackError
from tests.ports import free_port

runner = CliRunner()


def prefect_api(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """A Prefect API call's JSON, retried on a 5xx or 429 as Prefect's own client retries them (its SQLite-backed
    server answered create_flow_run without a run once on a loaded 2-core VM); any other answer fails the test
    with its status and body."""
    for attempt in range(6):
        response = client.request(method, path, **kwargs)
        if response.status_code < 500 and response.status_code != 429:
            break
        time.sleep(0.5 * 2**attempt)
    assert response.is_success, f"{method} {path}: HTTP {response.status_code}: {response.text[:500]}"
    return response.json()


def gone(pid: int) -> bool:
    """True if pid is not a live process (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@pytest.fixture
def ports(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Free ports for the stack and serving, and os.environ restored afterwards (`slipway` sets defaults in it)."""
    chosen = {"prefect": free_port(), "mlflow": free_port(), "serving": free_port()}
    monkeypatch.setenv("SLIPWAY__STACK__PREFECT_PORT", str(chosen["prefect"]))
    monkeypatch.setenv("SLIPWAY__STACK__MLFLOW_PORT", str(chosen["mlflow"]))
    monkeypatch.setenv("SLIPWAY__SERVING__PORT", str(chosen["serving"]))
    saved = dict(os.environ)
    yield chosen
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def stack_stopped(home: Path, ports: dict[str, int]) -> Iterator[None]:
    """Whatever `slipway up` left running is stopped after the test, passed or failed (`down` is idempotent)."""
    yield
    if stack.read_stack(home).processes:
        down = runner.invoke(app, ["down"])
        assert down.exit_code == 0, down.output


def test_deployments_carry_the_configured_schedules_and_parameters(home: Path) -> None:
    # Given the shipped config, when the deployments `slipway up` serves are built
    settings = load_config().settings
    built = {d.name: d for d in to_deployments(deployment_specs(settings.monitor), {"env": "dev", "config_file": None})}
    # Then monitor runs on the cron, sync on the interval, train on demand; each with the env and the config
    assert set(built) == {"monitor", "sync", "train"}
    monitor, sync = built["monitor"].schedules or [], built["sync"].schedules or []
    assert [s.schedule.cron for s in monitor] == [settings.monitor.schedule_cron]
    assert [s.schedule.interval.total_seconds() for s in sync] == [settings.monitor.sync_interval_s]
    assert not built["train"].schedules
    for deployment in built.values():
        assert deployment.parameters == {"env": "dev", "config_file": None}
        assert deployment.entrypoint and ":" not in deployment.entrypoint  # a module path, importable from anywhere
    assert built["train"].entrypoint == "flows.train.train_flow"


def test_up_fails_naming_the_port_and_the_setting_when_a_port_is_taken(
    home: Path, ports: dict[str, int], stack_stopped: None
) -> None:
    # Given something else listening on the MLflow UI's port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", ports["mlflow"]))
        squatter.listen()
        # When `slipway up` runs, then it exits 1 naming the port and the setting, having started nothing
        result = runner.invoke(app, ["up"])
    assert result.exit_code == 1, result.output
    assert f"port {ports['mlflow']}" in result.output and "stack.mlflow_port" in result.output
    assert "SLIPWAY__STACK__MLFLOW_PORT" in result.output
    assert stack.read_stack(home).processes == {}


def test_a_process_that_dies_before_it_is_ready_is_named_with_its_log(home: Path) -> None:
    # Given a process that prints and exits at once
    spec = stack.ComponentSpec(
        name="doomed",
        title="doomed server",
        argv=(sys.executable, "-c", "print('cannot open the database'); raise SystemExit(3)"),
        env=dict(os.environ),
        cwd=home,
        port=None,
        port_setting=None,
        url="http://127.0.0.1:1",
        health_url="http://127.0.0.1:1/health",
        ready_timeout_s=60,
        timeout_setting="stack.doomed_timeout_s",
    )
    launch = stack.start_component(home, spec)
    # When `up` waits for it, then the error names it, how it ended and the end of its log, and it is forgotten
    with pytest.raises(StackError, match=r"doomed server \(pid \d+\) exited with code 3") as raised:
        stack.wait_ready(home, launch, spec)
    assert "cannot open the database" in str(raised.value) and str(home / "logs" / "doomed.log") in str(raised.value)
    assert "doomed" not in stack.read_stack(home).processes


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_up_status_down(home: Path, ports: dict[str, int], stack_stopped: None) -> None:
    started = time.monotonic()
    # Given a fresh project home (no champion) and free ports
    # When `slipway up` runs
    up = runner.invoke(app, ["up"])
    assert up.exit_code == 0, up.output
    # Then the Prefect server, the MLflow UI and the deployments process run; serving is skipped and says why
    assert "skipped" in up.output and "has no champion" in up.output, up.output
    processes = stack.read_stack(home).processes
    assert set(processes) == {"prefect", "mlflow", "deployments"}
    prefect_url, mlflow_url = f"http://127.0.0.1:{ports['prefect']}", f"http://127.0.0.1:{ports['mlflow']}"
    assert processes["prefect"].url == prefect_url and processes["mlflow"].url == mlflow_url
    assert f"Prefect UI  {prefect_url}" in up.output and f"MLflow UI  {mlflow_url}" in up.output
    with httpx.Client(timeout=10, trust_env=False) as client:
        assert client.get(f"{prefect_url}/api/health").status_code == 200
        assert client.get(f"{mlflow_url}/health").status_code == 200
        # MLflow's UI reads the project's tracking store
        experiments = client.post(f"{mlflow_url}/api/2.0/mlflow/experiments/search", json={"max_results": 10})
        assert experiments.status_code == 200, experiments.text
    assert (home / "prefect" / "prefect.db").is_file() and (home / "mlflow.db").is_file()

    # And the Prefect API lists the three deployments with their schedules, served and not paused
    deployments = {d["name"]: d for d in stack.list_deployments(f"{prefect_url}/api")}
    assert set(deployments) == {"monitor", "sync", "train"}
    assert [s["schedule"]["cron"] for s in deployments["monitor"]["schedules"]] == ["*/15 * * * *"]
    assert [s["schedule"]["interval"] for s in deployments["sync"]["schedules"]] == [60.0]
    assert deployments["train"]["schedules"] == []
    for deployment in deployments.values():
        assert deployment["status"] == "READY" and not deployment["paused"]
        assert deployment["parameters"] == {"env": None, "config_file": None}

    # And the deployments process runs what the server schedules: a sync run, with the project's config
    with httpx.Client(base_url=f"{prefect_url}/api", timeout=10, trust_env=False) as client:
        run = prefect_api(client, "POST", f"/deployments/{deployments['sync']['id']}/create_flow_run", json={})
        deadline = time.monotonic() + 120
        while (state := prefect_api(client, "GET", f"/flow_runs/{run['id']}")["state"])["type"] not in (
            "COMPLETED",
            "FAILED",
            "CRASHED",
            "CANCELLED",
        ):
            assert time.monotonic() < deadline, f"the sync run is still {state['type']} after 120 s"
            time.sleep(1)
    assert state["type"] == "COMPLETED", state

    # When `slipway up` runs again, then every process is reported as running and left alone
    again = runner.invoke(app, ["up"])
    assert again.exit_code == 0, again.output
    assert again.output.count("left alone") == 3, again.output
    assert {n: p.pid for n, p in stack.read_stack(home).processes.items()} == {n: p.pid for n, p in processes.items()}

    # When `slipway status` runs, then it shows each process alive (and exits 1: nothing serves)
    shown = runner.invoke(app, ["status"])
    assert shown.exit_code == 1, shown.output
    for process in processes.values():
        assert str(process.pid) in shown.output
    assert shown.output.count("alive") >= 3 and "dead" not in shown.output, shown.output
    as_json = json.loads(runner.invoke(app, ["status", "--json"]).output)
    assert as_json["condition"] == "stopped"
    assert {p["process"]["name"]: p["alive"] for p in as_json["stack"]} == {
        "prefect": True,
        "mlflow": True,
        "deployments": True,
    }

    # When `slipway down` runs, then every process of the stack, children included, is gone
    pids = {pid for status in stack.stack_status(home) for pid in status.pids}
    assert {p.pid for p in processes.values()} <= pids
    down = runner.invoke(app, ["down"])
    assert down.exit_code == 0, down.output
    assert down.output.count("stopped") == 3, down.output
    # (a process that has released its memory is gone for `down`; give the kernel a moment to finish it)
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(gone(pid) for pid in pids), [pid for pid in pids if not gone(pid)]
    assert not (home / stack.STACK_FILE).exists()
    after = runner.invoke(app, ["status"])
    assert "not started" in after.output
    assert runner.invoke(app, ["down"]).output.strip().endswith("nothing was running")
    assert time.monotonic() - started < 240


def test_infra_prefect_yaml_declares_the_served_deployments(home: Path) -> None:
    # Given the worker-based deployments file and the shipped config
    import yaml

    declared = yaml.safe_load((Path(__file__).parents[2] / "infra" / "prefect.yaml").read_text())
    specs = {spec.name: spec for spec in deployment_specs(load_config().settings.monitor)}
    deployments = {d["name"]: d for d in declared["deployments"]}
    # Then it declares what `slipway up` serves: same flows, same default schedules, one process work pool
    assert set(deployments) == set(specs)
    for name, spec in specs.items():
        deployment = deployments[name]
        module, function = spec.entrypoint.split(":")
        assert deployment["entrypoint"] == f"{module.replace('.', '/')}.py:{function}"
        assert deployment["work_pool"]["name"] == "slipway"
        assert deployment["parameters"] == {"env": None, "config_file": None}
        schedules = deployment["schedules"]
        assert [s.get("cron") for s in schedules if "cron" in s] == ([spec.cron] if spec.cron else [])
        assert [s.get("interval") for s in schedules if "interval" in s] == (
            [spec.interval_s] if spec.interval_s else []
        )


@pytest.mark.parametrize("command", ["up", "down", "status"])
def test_stack_commands_have_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output, result.output
