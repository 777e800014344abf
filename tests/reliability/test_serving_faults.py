"""A real `bentoml serve` of a real Bento under faults and load.

Proves: a worker killed with SIGKILL is replaced by the server (circus, BentoML's process manager) and requests are
answered again without anyone restarting anything; 60 s of wrk at the serving benchmark's load (2 workers,
`-t2 -c32`, one-row requests, the inference log on, as the benchmark's slipway-logged case) gives no error, exactly
one inference-log row per successful response, and resident memory growing by less than 10%.
"""

# ruff: noqa: F811  (the fixtures imported from test_bento are used by name)
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.reliability.conftest import Figures
from tests.reliability.test_serving_input import start
from tests.serving.test_bento import (  # noqa: F401
    BuiltBento,
    ExampleModel,
    built_bento,
    example_model,
    stop_server,
)
from tests.serving.test_service_guard import metric

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

LOAD_SECONDS = 60
BENCH_LOAD = {"threads": 2, "connections": 32, "workers": 2}  # bench/serving.py ServingOptions defaults


def workers_of(pid: int) -> list[int]:
    """Pids of the server's worker processes (BentoML's `_bentoml_impl.worker.service`)."""
    import psutil

    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "_bentoml_impl.worker" in " ".join(child.cmdline()):
                found.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return sorted(found)


@pytest.mark.reliability("kill-worker")
def test_a_killed_worker_is_replaced_and_requests_resume_without_a_restart(
    built_bento: BuiltBento, example_model: ExampleModel, tmp_path: Path, figures: Figures
) -> None:
    # Given a server with one worker (so while it is gone nothing answers) and a client sending without pause
    process, server = start(built_bento, tmp_path, SLIPWAY_WORKERS="1")
    body = {"records": example_model.rows.head(1).to_dict(orient="records")}
    answers: list[tuple[float, bool]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=5.0) as http:
            while not stop.is_set():
                sent_at = time.monotonic()  # when the request left: an answer counts for the kill it was sent after
                try:
                    ok = http.post("/predict", json=body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                    time.sleep(0.05)
                answers.append((sent_at, ok))

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    kills = 3
    outages: list[float] = []
    replaced = 0
    try:
        for _ in range(kills):
            before = workers_of(process.pid)
            assert len(before) == 1, before
            # When the worker is killed
            killed_at = time.monotonic()
            os.kill(before[0], signal.SIGKILL)
            # Then a new worker takes its place, and requests are answered again
            deadline = killed_at + 90
            while time.monotonic() < deadline:
                now = workers_of(process.pid)
                if now and now != before and any(t > killed_at and ok for t, ok in answers[-50:]):
                    break
                time.sleep(0.2)
            now = workers_of(process.pid)
            served_again = [t for t, ok in answers if t > killed_at and ok]
            assert now and now[0] != before[0], f"worker {before[0]} not replaced: {now}"
            assert served_again, "no request answered after the kill"
            replaced += 1
            outages.append(served_again[0] - killed_at)
            time.sleep(2.0)
        # And the server process is the one started at the beginning: nobody restarted it
        assert process.poll() is None
        tail = [ok for t, ok in answers if t > time.monotonic() - 1.5]
    finally:
        stop.set()
        thread.join(timeout=10)
        stop_server(process)
    failed = sum(not ok for _, ok in answers)
    figures.tried = "SIGKILL of the only worker of `bentoml serve`, under a client sending requests back to back"
    figures.times = kills
    figures.add(
        workers_replaced=replaced,
        seconds_until_answered_again=", ".join(f"{s:.1f}" for s in outages),
        requests=len(answers),
        requests_failed_during_outages=failed,
        server_restarted_by_hand=0,
    )
    assert tail and all(tail), "requests still failing after the last replacement"


@pytest.mark.reliability("load")
@pytest.mark.timeout(900)
def test_sixty_seconds_at_benchmark_load_lose_nothing_and_hold_memory(
    built_bento: BuiltBento, example_model: ExampleModel, tmp_path: Path, figures: Figures
) -> None:
    from bench.loadgen import Load, run_wrk
    from bench.processes import PeakMemory, tree_memory

    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (`make reliability` and `make bench` install it)")
    # Given the benchmark's slipway-logged server: 2 workers, every served row logged to SQLite
    db = tmp_path / "inference_log.db"
    process, server = start(
        built_bento, tmp_path, SLIPWAY_WORKERS=str(BENCH_LOAD["workers"]), SLIPWAY_INFERENCE_LOG_URL=f"sqlite:///{db}"
    )
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"records": example_model.rows.head(1).to_dict(orient="records")}))
    url = f"{server.url}/predict"
    try:
        # Warm up (first requests pay for imports and caches), then take the memory baseline
        run_wrk(url, body, Load(threads=BENCH_LOAD["threads"], connections=BENCH_LOAD["connections"], duration_s=5))
        _wait_queue_empty(server.url)
        baseline = tree_memory(process.pid, with_pss=False).rss_mib
        before = httpx.get(f"{server.url}/metrics", timeout=10.0).text
        # When wrk runs for 60 s at the benchmark's concurrency
        load = Load(threads=BENCH_LOAD["threads"], connections=BENCH_LOAD["connections"], duration_s=LOAD_SECONDS)
        with PeakMemory(process.pid) as peak:
            result = run_wrk(url, body, load)
        end_rss = tree_memory(process.pid, with_pss=False).rss_mib
        _wait_queue_empty(server.url)
        after = httpx.get(f"{server.url}/metrics", timeout=10.0).text
    finally:
        stop_server(process)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    ok_server = delta("bentoml_service_request_total", endpoint="/predict", http_response_code="200")
    not_ok_server = delta("bentoml_service_request_total", endpoint="/predict") - ok_server
    written = delta("slipway_inference_log_rows_written_total")
    dropped = delta("slipway_inference_log_rows_dropped_total")
    with sqlite3.connect(db) as connection:
        logged_total = connection.execute("SELECT COALESCE(SUM(n_rows), 0) FROM inference_log").fetchone()[0]
    growth = (end_rss - baseline) / baseline
    figures.tried = (
        f"wrk -t{load.threads} -c{load.connections} -d{LOAD_SECONDS}s, one-row POST /predict, 2 workers, inference "
        "log on SQLite (the benchmark's slipway-logged case), after a 5 s warm-up"
    )
    figures.times = result.requests
    figures.add(
        req_per_s=round(result.requests_per_s),
        p99_ms=round(result.p99_ms, 1),
        errors=result.non2xx + result.socket_error_count,
        server_200s=int(ok_server),
        inference_log_rows_written=int(written),
        rows_dropped=int(dropped),
        rss_mib=f"{baseline:.0f} -> {end_rss:.0f} (peak {peak.peak_rss_mib:.0f})",
        rss_growth_pct=round(100 * growth, 1),
    )
    # Then no request failed, every 200 the server sent is one logged row, none dropped, and memory held
    assert result.non2xx == 0 and result.socket_error_count == 0, (result.status, result.socket_errors)
    assert not_ok_server == 0
    assert written == ok_server and dropped == 0
    assert logged_total == metric(after, "slipway_inference_log_rows_written_total")
    assert abs(ok_server - result.requests) <= load.connections  # wrk stops with at most one request per connection
    assert growth < 0.10, f"RSS grew {growth:.1%}: {baseline:.0f} -> {end_rss:.0f} MiB"


def _wait_queue_empty(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = httpx.get(f"{url}/metrics", timeout=10.0).text
        if metric(text, "slipway_inference_log_queue_rows") == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"the inference log queue did not drain in {timeout_s:.0f} s")
