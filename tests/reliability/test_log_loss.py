"""The monitor's reading of inference-log loss from /metrics text (the fast half of the `log-unwritable` item; the
live half, serving behind HAProxy and the monitor flow, is in test_loop_faults).

Proves: the counters a real InferenceLog exports while its store cannot be written come back from the Prometheus
text as rows dropped by reason, and a scrape without them (no inference log configured) is None, not zero loss.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from serving.inference_log import InferenceLog, LoggedRequest
from tasks.monitor import inference_log_loss


def test_dropped_rows_of_an_unwritable_store_are_read_back_from_the_metrics_text(tmp_path: Path) -> None:
    # Given an inference log whose SQLite file would lie below a regular file, exporting to its own registry
    (tmp_path / "not-a-folder").write_text("")
    registry = CollectorRegistry()
    log = InferenceLog(f"sqlite:///{tmp_path}/not-a-folder/log.db", flush_interval_s=0.05, registry=registry).start()
    try:
        # When three requests of four rows are recorded
        for index in range(3):
            log.record_request(
                LoggedRequest(
                    request_id=f"r{index}",
                    model_name="m",
                    model_version="1",
                    features={"a": [1.0, 2.0, 3.0, 4.0]},
                    predictions=[0, 1, 0, 1],
                    latency_ms=1.0,
                    ts=datetime.now(UTC),
                )
            )
        deadline = time.monotonic() + 20
        while log.rows_dropped < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        log.close(timeout_s=5)
    # Then the scrape says 12 rows dropped because the write failed, none written, and the line says so
    loss = inference_log_loss(generate_latest(registry).decode())
    assert loss is not None
    assert (loss.rows_dropped, loss.rows_written, loss.dropped_by_reason["write_failed"]) == (12, 0, 12)
    assert "12 rows DROPPED (write_failed: 12)" in loss.line()


def test_a_scrape_without_inference_log_metrics_is_no_reading() -> None:
    assert inference_log_loss("# HELP x y\n# TYPE x counter\nx_total 3.0\n") is None
