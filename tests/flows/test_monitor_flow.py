"""The closed loop on real parts: a trained champion served by `bentoml serve` behind HAProxy, traffic through
HTTP into the inference log, the monitor flow judging it with Great Expectations and Evidently, and acting.

One scenario, in order, because each phase builds on what the previous one left (a serving version, guard
state, promotion history), and training and deploying are the slow parts:
1. no traffic -> insufficient data, no action (the probe gives latency, not drift rows);
2. traffic from the reference distribution over two windows -> no drift, no action (false-trigger check);
3. inputs outside the suite's bounds -> data incident, no retrain;
4. shifted traffic (only malignant tumours: every value valid, the mix changed) -> drift -> exactly one
   retrain -> gates -> a new champion serving;
5. the drift persists on the new version -> no second retrain (the circuit breaker opens);
6. a latency SLO breach right after that promotion -> rollback and the previous version serving;
7. the champion alias moved by hand (as the MLflow UI does) -> sync records a manual move and deploys it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from examples.closed_loop import reference_traffic, send, shifted_traffic, wait_logged
from tasks.deploy import serving_status, stop_serving
from tasks.observe import read_verdicts
from tasks.registry import read_history
from tasks.resources import Registry
from tests.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

MODEL = "breast-cancer-classifier"


@pytest.fixture
def loop_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    settings = {
        "SLIPWAY__GATES__LATENCY__P99_MS": "100",  # the wiring, not this loaded machine's speed
        "SLIPWAY__SERVING__PORT": str(free_port()),
        "SLIPWAY__SERVING__WORKERS": "1",
        "SLIPWAY__MONITOR__MIN_ROWS": "200",
        "SLIPWAY__MONITOR__SLO__MIN_REQUESTS": "10",
        "SLIPWAY__MONITOR__SLO__PROBE_REQUESTS": "12",
        "SLIPWAY__MONITOR__RETRAIN": "inline",
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    try:
        yield home
    finally:
        stop_serving.fn(home)


def registry(home: Path) -> Registry:
    return Registry(
        f"sqlite:///{home / 'mlflow.db'}", f"sqlite:///{home / 'mlflow.db'}", "slipway", home / "mlartifacts"
    )


def inputs() -> pd.DataFrame:
    from examples.breast_cancer import load_data

    return load_data()


def serving_url(home: Path) -> str:
    status = serving_status(home)
    assert status.state is not None and status.condition == "serving", status.detail
    return status.state.front.probe_url


def served_version(home: Path) -> str:
    status = serving_status(home)
    assert status.state is not None, status.detail
    return status.state.backend.model_version


def test_closed_loop(loop_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.deploy import deploy
    from flows.monitor import monitor_flow
    from flows.sync import sync_flow
    from flows.train import train_flow

    home = loop_home
    data = inputs()
    first = train_flow()
    deploy()
    url = serving_url(home)
    log_url = f"sqlite:///{home / 'inference_log.db'}"
    assert served_version(home) == first.version

    # 1. No traffic yet: the probe measures latency, but its rows are not drift evidence.
    verdict = monitor_flow()
    assert (verdict.status, verdict.action) == ("insufficient_data", "none"), verdict.reason
    assert verdict.latency is not None and verdict.latency.requests >= 12

    # 2. The reference distribution, two windows in a row: no drift, no action.
    for seed in (1, 2):
        start = datetime.now(UTC)
        send(url, reference_traffic(data, 300, seed))
        wait_logged(log_url, start, 300)
        verdict = monitor_flow(since=start)
        assert verdict.rows == 300
        assert (verdict.status, verdict.action) == ("ok", "none"), verdict.reason
        assert verdict.drift is not None and not verdict.drift.dataset_drift
        assert verdict.report_path is not None and Path(verdict.report_path).is_file()

    # 3. Values no tumour has (negative radius): a data incident, reported, never retrained on.
    start = datetime.now(UTC)
    broken = data.sample(n=250, replace=True, random_state=3).assign(mean_radius=-5.0)
    send(url, broken)
    wait_logged(log_url, start, 250)
    verdict = monitor_flow(since=start)
    assert verdict.status == "data_incident" and verdict.action in ("none", "blocked"), verdict.reason
    assert "mean_radius" in verdict.reason

    # 4. Shifted traffic: only malignant tumours. Drift -> one retrain -> gates -> a new champion serving.
    start = datetime.now(UTC)
    shifted = shifted_traffic(data, 300, seed=4)
    send(url, shifted)
    wait_logged(log_url, start, 300)
    verdict = monitor_flow(since=start)
    assert (verdict.status, verdict.action) == ("drift", "retrain"), verdict.reason
    assert verdict.drift is not None and verdict.drift.dataset_drift
    assert "mean_radius" in verdict.drift.drifted_columns
    second = registry(home).aliases(MODEL)["champion"]
    assert second != first.version
    assert served_version(home) == second
    url = serving_url(home)

    # 5. The drift stays on the new version: no second retrain in this episode.
    start = datetime.now(UTC)
    send(url, shifted)
    wait_logged(log_url, start, 300)
    verdict = monitor_flow(since=start)
    assert verdict.status == "drift" and verdict.action == "blocked", verdict.reason
    assert verdict.guardrail in ("circuit_breaker", "episode_retrained", "cooldown")
    assert registry(home).aliases(MODEL)["champion"] == second
    retrains = [r for r in read_verdicts(home / "monitor") if r.action == "retrain"]
    assert len(retrains) == 1

    # 6. Latency over the SLO within the bake window of that promotion: roll back, serve the previous version.
    monkeypatch.setenv("SLIPWAY__MONITOR__SLO__P99_MS", "0.001")
    send(url, data.sample(n=40, random_state=6), batch=2)
    verdict = monitor_flow(window_minutes=0.5)
    assert (verdict.status, verdict.action) == ("slo_breach", "rollback"), verdict.reason
    assert registry(home).aliases(MODEL)["champion"] == first.version
    assert served_version(home) == first.version
    assert read_history(registry(home), MODEL)[-1].action == "rollback"
    monkeypatch.delenv("SLIPWAY__MONITOR__SLO__P99_MS")

    # 7. Someone moves the alias in the MLflow UI: sync records it and serving follows.
    registry(home).client.set_registered_model_alias(MODEL, "champion", second)
    result = sync_flow()
    assert result.manual_move_recorded and result.deployed, result.detail
    assert served_version(home) == second
    last = read_history(registry(home), MODEL)[-1]
    assert last.action == "manual" and last.moves[0].to_version == second
    assert not sync_flow().deployed  # nothing left to do

    # Every verdict was recorded: the index, a report folder each, the MLflow monitor experiment, the version tag.
    records = read_verdicts(home / "monitor")
    assert len(records) == 7
    assert all(Path(r.report_dir, "verdict.json").is_file() for r in records)
    runs = registry(home).client.search_runs(
        [registry(home).client.get_experiment_by_name("slipway-monitor").experiment_id]
    )
    assert len(runs) == 7
    assert "slipway.monitor.last" in registry(home).version_tags(MODEL, first.version)
