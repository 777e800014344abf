"""The MLflow tracking server stops in the middle of a release (the server topology: `mlflow server` on PostgreSQL
with proxied artifacts, on a database this test creates and drops).

Proves: the release fails with an error that names the server it could not reach; no alias moved and no history
entry was written while the server was gone; once the server is back, running the release again completes and
makes its version the champion.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ports import free_port
from tests.reliability.conftest import Figures
from tests.reliability.test_loop_faults import _postgres

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MODEL = "breast-cancer-classifier"


class MlflowServer:
    """`mlflow server` on a PostgreSQL database with proxied artifacts, on 127.0.0.1; start() and kill()."""

    def __init__(self, database: str, artifacts: Path, port: int, log: Path) -> None:
        self.command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}",
            "--artifacts-destination", artifacts.resolve().as_uri(),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ]  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 180.0) -> float:
        started = time.monotonic()
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true"),
            )  # fmt: skip
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise AssertionError(f"mlflow server exited {self.process.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"mlflow server not ready in {timeout_s:.0f} s: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.fixture
def mlflow_server(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowServer]:
    database = f"slipway_rel_mlflow_{secrets.token_hex(4)}"
    try:
        _postgres(database, "CREATE DATABASE {database}")
    except Exception as exc:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 unreachable: {exc}")
    server = MlflowServer(database, tmp_path / "artifacts", free_port(), tmp_path / "mlflow-server.log")
    try:
        server.start()
        monkeypatch.setenv("SLIPWAY__MLFLOW__TRACKING_URI", server.url)
        monkeypatch.setenv("SLIPWAY__GATES__LATENCY__P99_MS", "100")
        # MLflow's client retries a refused connection 7 times with backoff 2 (minutes); a bounded test asks for less.
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        yield server
    finally:
        server.kill()
        try:
            _postgres(database, "DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        except Exception as exc:
            print(f"could not drop {database}: {exc}")


def _state(url: str) -> dict[str, Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    models = {m.name: m for m in client.search_registered_models()}
    model = models.get(MODEL)
    if model is None:
        return {"aliases": {}, "history": 0, "versions": {}}
    versions = client.search_model_versions(f"name='{MODEL}'")
    return {
        "aliases": dict(model.aliases),
        "history": sum(k.startswith("slipway.history.") for k in model.tags),
        "versions": {v.version: v.tags.get("slipway.status") for v in versions},
    }


@pytest.mark.reliability("mlflow-down")
@pytest.mark.usefixtures("prefect_harness")
def test_mlflow_server_stopping_mid_release_fails_clearly_changes_no_alias_and_a_rerun_completes(
    mlflow_server: MlflowServer, figures: Figures
) -> None:
    from mlflow import MlflowClient

    from flows.release import release
    from flows.train import train_flow

    # Given a model logged to the tracking server, and a release of it started
    run_id = train_flow(release_after=False).run_id  # type: ignore[union-attr]
    before = _state(mlflow_server.url)
    outcome: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            outcome["result"] = release(run_id=run_id)
        except BaseException as exc:
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - started
        outcome["ended"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    # When the server is killed as soon as the release has registered its version (mid-release)
    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and thread.is_alive():
        try:
            if client.search_model_versions(f"name='{MODEL}'"):
                break
        except Exception:
            pass
        time.sleep(0.2)
    mlflow_server.kill()
    killed = time.monotonic()
    thread.join(timeout=600)
    # Then the release failed, naming the server it could not reach
    error = outcome.get("error")
    assert error is not None, f"the release did not fail: {outcome}"
    message = f"{type(error).__name__}: {error}"
    assert "127.0.0.1" in message and str(mlflow_server.url.rsplit(":", 1)[1]) in message, message[:800]
    # And once the server is back, no alias moved and no history entry was written
    restart_s = mlflow_server.start()
    during = _state(mlflow_server.url)
    assert during["aliases"] == before["aliases"] == {}
    assert during["history"] == before["history"] == 0
    # And running the release again completes, making its version the champion
    summary = release(run_id=run_id)
    after = _state(mlflow_server.url)
    assert after["aliases"].get("champion") == summary.version
    assert after["history"] == 1
    orphans = [v for v, status in during["versions"].items() if status != "released"]
    figures.tried = (
        "`mlflow server` (PostgreSQL, proxied artifacts) SIGKILLed once the release had registered its version; "
        "restarted; release run again"
    )
    figures.times = 1
    figures.add(
        error=message.splitlines()[0][:160],
        seconds_from_kill_to_failure=round(outcome["ended"] - killed, 1),
        aliases_moved_while_down=0,
        history_entries_while_down=0,
        unpromoted_versions_left=f"{len(orphans)} (status {', '.join(str(during['versions'][v]) for v in orphans)})",
        rerun="completed: champion v" + str(summary.version),
        server_restart_s=round(restart_s, 1),
    )
