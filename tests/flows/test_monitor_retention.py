"""Inference-log retention: each monitor run deletes what is older than serving.inference_log_retention_days."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text

from serving.inference_log import InferenceLog, LoggedRow, sqlite_url

pytestmark = pytest.mark.usefixtures("prefect_harness")


def log_requests(url: str, stamps: list[tuple[str, datetime]]) -> None:
    log = InferenceLog(url, registry=CollectorRegistry()).start()
    for request_id, ts in stamps:
        log.record([LoggedRow(request_id, "breast-cancer-classifier", "1", 0, {"mean_radius": 14.0}, 0, 1.0, ts=ts)])
    log.close(timeout_s=30)
    assert log.rows_dropped == 0


@contextmanager
def flow_run_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Prefect's run loggers do not propagate to the root logger: hand them caplog's handler directly."""
    logger = logging.getLogger("prefect.flow_runs")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="prefect.flow_runs"):
            yield
    finally:
        logger.removeHandler(caplog.handler)


def logged_ids(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return sorted(connection.execute(text("SELECT request_id FROM inference_log")).scalars())
    finally:
        engine.dispose()


def test_a_monitor_run_prunes_the_log_to_its_retention(
    home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Given requests logged 10 and 3 days ago and a retention of 7 days, when the monitor runs (nothing serving:
    nothing judged), then the 10-day-old request is deleted, the 3-day-old one kept, and the run's log says so."""
    from flows.monitor import monitor_flow

    monkeypatch.setenv("SLIPWAY__SERVING__INFERENCE_LOG_RETENTION_DAYS", "7")
    url = sqlite_url(home / "inference_log.db")
    now = datetime.now(UTC)
    log_requests(url, [("ten-days", now - timedelta(days=10)), ("three-days", now - timedelta(days=3))])

    with flow_run_logs(caplog):
        verdict = monitor_flow()

    assert verdict.action == "none"
    assert logged_ids(url) == ["three-days"]
    lines = [r.getMessage() for r in caplog.records if "inference log retention" in r.getMessage()]
    assert lines and "(7 days): deleted 1 log rows (1 predictions) logged before" in lines[0], lines


def test_a_failed_prune_is_logged_and_the_verdict_stands(
    home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a log table an older slipway wrote (one row per prediction, which pruning refuses to touch), when the
    monitor runs, then it still returns its verdict and the failed retention is logged as an error naming the
    table and what to do."""
    from flows.monitor import monitor_flow

    home.mkdir(parents=True, exist_ok=True)
    url = sqlite_url(home / "inference_log.db")
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE inference_log (id INTEGER PRIMARY KEY, ts TEXT, feature_json TEXT)"))
    engine.dispose()

    with flow_run_logs(caplog):
        verdict = monitor_flow()

    assert verdict.action == "none"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "retention" in r.getMessage()]
    assert errors and "older slipway's inference log" in errors[0], errors


def test_an_unreachable_log_store_fails_the_monitor_naming_it(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given an inference log URL whose server refuses connections, when the monitor runs, then it fails with
    InferenceLogUnavailable naming the store (not "insufficient data", which would hide the outage)."""
    from flows.monitor import monitor_flow
    from tasks.errors import InferenceLogUnavailable

    monkeypatch.setenv("SLIPWAY__SERVING__INFERENCE_LOG_URL", "postgresql+psycopg2://nobody:pw@127.0.0.1:1/none")

    with pytest.raises(
        InferenceLogUnavailable,
        match=r"cannot read the inference log at postgresql\+psycopg2://nobody:\*\*\*@127\.0\.0\.1:1/none",
    ):
        monitor_flow()
