"""Shared fixtures: one Prefect test harness per session, MLflow on a temp SQLite file per test."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# The project's own processes never phone home; set before any library reads them.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A real, temporary Prefect API for the whole session (started once: it takes several seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh slipway home (MLflow SQLite, artifacts, BentoML home, reports) for one test."""
    # Hidden, like the default `.slipway/`: some tools refuse paths under hidden folders.
    path = tmp_path / ".slipway"
    monkeypatch.setenv("SLIPWAY__PROJECT__HOME", str(path))
    monkeypatch.setenv("BENTOML_HOME", str(path / "bentoml"))
    for key in [k for k in os.environ if k.startswith("SLIPWAY__") and k != "SLIPWAY__PROJECT__HOME"]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("SLIPWAY_ENV", raising=False)
    return path


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with its schema migrated once (migrations take seconds per database)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def registry(home: Path, mlflow_db_template: Path):
    """A real MLflow registry on its own SQLite file under the test's home."""
    from tasks.resources import Registry

    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mlflow_db_template, home / "mlflow.db")
    return Registry(
        tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        registry_uri=f"sqlite:///{home / 'mlflow.db'}",
        experiment="slipway-test",
        artifact_root=home / "mlartifacts",
    )
