"""The inference log writer and reader, against a real SQLite file and the machine's PostgreSQL."""

from __future__ import annotations

import gc
import itertools
import json
import logging
import math
import resource
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from sqlalchemy import MetaData, create_engine, inspect, text
from sqlalchemy.exc import OperationalError

from serving.features import model_feeds
from serving.inference_log import (
    _BINARY_MIN_ROWS,
    InferenceLog,
    InferenceLogError,
    LoggedRequest,
    LoggedRow,
    _entry_bytes,
    find_request,
    inference_log_table,
    prune_log,
    read_window,
    sqlite_url,
)
from serving.options import OptionsError

ROOT = Path(__file__).resolve().parents[2]
PG_USERS = ("postgres", "root")
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def metrics() -> CollectorRegistry:
    """A fresh Prometheus registry, so counts start at zero in every test."""
    return CollectorRegistry()


@pytest.fixture(scope="module")
def pg_base_url() -> str:
    """The URL of the local PostgreSQL `test` database (trust auth), or skip when it is unreachable."""
    errors = []
    for user in PG_USERS:
        url = f"postgresql+psycopg2://{user}@127.0.0.1:5432/test"
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return url
        except OperationalError as error:
            errors.append(f"{user}: {str(error.orig).strip()}")
        finally:
            engine.dispose()
    pytest.skip(f"PostgreSQL at 127.0.0.1:5432 database 'test' unreachable ({'; '.join(errors)})")


@pytest.fixture
def sqlite_store(tmp_path: Path) -> tuple[str, str]:
    """A SQLite file that does not exist yet (the writer creates it) and a table name."""
    return sqlite_url(tmp_path / "logs" / "inference_log.db"), "inference_log"


@pytest.fixture
def pg_store(pg_base_url: str) -> Iterator[tuple[str, str]]:
    """The local PostgreSQL and a table name unique to this test, dropped at the end."""
    table = f"il_{uuid.uuid4().hex[:12]}"
    yield pg_base_url, table
    engine = create_engine(pg_base_url)
    with engine.begin() as connection:
        connection.execute(text(f'DROP TABLE IF EXISTS "{table}"'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> tuple[str, str]:
    """Each real backend in turn: (url, table)."""
    return request.getfixturevalue(f"{'sqlite' if request.param == 'sqlite' else 'pg'}_store")


def request_rows(request_id: str, n: int, model_version: str = "3", ts: datetime | None = None) -> list[LoggedRow]:
    """One request's rows with two features and classifier outputs."""
    return [
        LoggedRow(
            request_id=request_id,
            model_name="churn",
            model_version=model_version,
            row_index=i,
            features={"tenure": float(i), "plan": "pro" if i % 2 else "basic"},
            prediction=i % 2,
            latency_ms=1.5,
            probabilities=[0.25, 0.75],
            ts=ts or datetime.now(UTC),
        )
        for i in range(n)
    ]


def count_rows(url: str, table: str) -> int:
    """Predicted rows in the log (a table row is one request of n_rows rows)."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(f'SELECT COALESCE(SUM(n_rows), 0) FROM "{table}"')).scalar_one())
    finally:
        engine.dispose()


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@dataclass(frozen=True)
class Timing:
    seconds: float
    preempted: bool  # the OS took the CPU away during the call (involuntary context switch)


def timed_record(log: InferenceLog, rows: list[LoggedRow]) -> Timing:
    """How long one record() call took, with the cyclic GC paused for the call.

    Two pauses are not record()'s and would land on whatever code runs at that moment, so they are kept out:
    a full GC stops every thread for as long as the heap takes to scan (about 10 ms in a pytest process),
    and on a loaded machine the OS scheduler preempts threads for a few ms. Waiting for a lock or for the
    GIL is a voluntary switch, so it still counts.
    """
    gc.disable()
    try:
        switches = resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw
        started = time.perf_counter()
        log.record(rows)
        seconds = time.perf_counter() - started
        return Timing(seconds, resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw != switches)
    finally:
        gc.enable()


def assert_fast(timings: list[Timing], limit_s: float = 0.005) -> None:
    """Every call not preempted by the OS took less than limit_s, and preemption was rare."""
    slow = [t.seconds for t in timings if t.seconds >= limit_s and not t.preempted]
    assert not slow, f"record() took {max(slow) * 1e3:.1f} ms"
    assert sum(t.preempted for t in timings) <= len(timings) // 10


def describe(timings: list[Timing]) -> str:
    seconds = sorted(t.seconds for t in timings)
    p50, p99 = seconds[len(seconds) // 2], seconds[len(seconds) * 99 // 100]
    clean = max(t.seconds for t in timings if not t.preempted)
    return (
        f"record() p50 {p50 * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us, "
        f"max {seconds[-1] * 1e6:.0f} us (max not preempted {clean * 1e6:.0f} us, "
        f"{sum(t.preempted for t in timings)} calls preempted by the OS)"
    )


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "slipway.inference_log" and r.levelno == logging.WARNING]


# ---------------------------------------------------------------- writing


def test_every_recorded_row_is_written_after_close(
    store: tuple[str, str], metrics: CollectorRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given 4 request threads recording 20,000 rows, when the log is closed, then the table holds all of them."""
    url, table = store
    threads, requests_per_thread, rows_per_request = 4, 500, 10
    log = InferenceLog(url, table=table, registry=metrics).start()

    def serve(worker: int) -> None:
        for i in range(requests_per_thread):
            log.record(request_rows(f"w{worker}-{i}", rows_per_request))

    started = time.perf_counter()
    workers = [threading.Thread(target=serve, args=(w,)) for w in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    log.close(timeout_s=60)
    elapsed = time.perf_counter() - started

    expected = threads * requests_per_thread * rows_per_request
    assert (log.rows_recorded, log.rows_written, log.rows_dropped) == (expected, expected, 0)
    assert count_rows(url, table) == expected
    assert sample(metrics, "slipway_inference_log_rows_written_total") == expected
    assert sample(metrics, "slipway_inference_log_queue_rows") == 0
    with capsys.disabled():
        backend = url.split(":")[0]
        print(f"\n[inference log] {backend}: {expected} rows in {elapsed:.2f} s = {expected / elapsed:,.0f} rows/s")


def test_columnar_requests_are_expanded_to_rows(sqlite_store: tuple[str, str], metrics: CollectorRegistry) -> None:
    """Given a request recorded in columns, then one row per prediction is written with its own features."""
    url, table = sqlite_store
    with InferenceLog(url, table=table, registry=metrics) as log:
        log.record_request(
            LoggedRequest(
                request_id="req-1",
                model_name="churn",
                model_version="3",
                features={"tenure": [1.0, 2.0, 3.0], "plan": ["pro", "basic", "pro"]},
                predictions=[1, 0, 1],
                latency_ms=2.0,
                probabilities=[[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]],
                ts=T0,
            )
        )
    frame = read_window(url, since=T0, table=table)
    assert frame[["tenure", "plan", "prediction"]].values.tolist() == [
        [1.0, "pro", 1],
        [2.0, "basic", 0],
        [3.0, "pro", 1],
    ]
    engine = create_engine(url)
    with engine.connect() as connection:
        stored = connection.execute(text(f"SELECT n_rows, features, probabilities FROM {table} ORDER BY id")).all()
    engine.dispose()
    # One table row for the request, its columns as sent
    assert [(n, json.loads(f), json.loads(p)) for n, f, p in stored] == [
        (3, {"tenure": [1.0, 2.0, 3.0], "plan": ["pro", "basic", "pro"]}, [[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    ]


def test_the_requests_of_one_model_call_are_one_table_row_and_read_back_each_with_its_own_id_and_latency(
    store: tuple[str, str], metrics: CollectorRegistry
) -> None:
    """Given the requests two model calls answered together (adaptive batching), one of 5 joined rows as JSON
    and one of 12 with its float features and probabilities as bytes, and a call whose requests do not add up
    to its predictions, then each call is one table row, every prediction reads back with its own request's id
    and latency, and the call that does not add up is dropped as invalid and counted, alone."""
    import numpy as np

    url, table = store
    small = {"tenure": [1.0, 2.0, 3.0, 4.0, 5.0], "plan": ["a", "b", "c", "d", "e"]}
    block = np.arange(12, dtype=np.float64).reshape(1, 12) / 3
    large = {"tenure": block[0].tolist(), "plan": ["p"] * 12}
    with InferenceLog(url, table=table, registry=metrics) as log:
        log.record_batch(
            [("a", 1, 0.5), ("b", 3, 0.75), ("c", 1, 1.0)], "churn", "3", small, [0, 1, 0, 1, 0],
            np.full((5, 2), 0.5), ts=T0,
        )  # fmt: skip
        log.record_batch(
            [("d", 10, 2.5), ("e", 2, 3.5)], "churn", "3", large, [1] * 12, np.full((12, 2), 0.25),
            floats=block, float_names=("tenure",), ts=T0 + timedelta(seconds=1),
        )  # fmt: skip
        log.record_batch([("f", 1, 1.0), ("g", 3, 1.0)], "churn", "3", small, [0] * 5, None, ts=T0)
    assert (log.rows_written, log.rows_dropped_invalid) == (17, 5)
    assert "request 'f' not loggable: ValueError: 5 predictions for requests of [1, 3] rows" in str(log.last_error)
    engine = create_engine(url)
    with engine.connect() as connection:
        stored = connection.execute(text(f'SELECT request_id, n_rows, numbers FROM "{table}" ORDER BY id')).all()
    engine.dispose()
    assert [(request_id, n_rows, numbers is not None) for request_id, n_rows, numbers in stored] == [
        ("a", 5, False),
        ("d", 12, True),
    ]
    frame = read_window(url, since=T0, table=table, probabilities=True)
    assert frame["request_id"].tolist() == ["a", "b", "b", "b", "c", *["d"] * 10, "e", "e"]
    assert frame["latency_ms"].tolist() == [0.5, 0.75, 0.75, 0.75, 1.0, *[2.5] * 10, 3.5, 3.5]
    assert frame["tenure"].tolist() == small["tenure"] + large["tenure"]
    assert frame["plan"].tolist() == small["plan"] + large["plan"]
    assert frame["probabilities"].tolist() == [[0.5, 0.5]] * 5 + [[0.25, 0.25]] * 12
    assert frame["ts"].tolist() == [T0] * 5 + [T0 + timedelta(seconds=1)] * 12


def test_float_features_left_to_the_block_are_logged_as_if_their_lists_were_given(
    store: tuple[str, str], metrics: CollectorRegistry
) -> None:
    """Given joined calls whose float features' values are None and held by `floats` (as the service passes
    them), one too small for `numbers` (JSON) and one large enough (bytes), then both read back exactly as the
    same calls with the lists given do: the block is what the requests held."""
    import numpy as np

    url, table = store
    for n_rows, base in ((4, T0), (12, T0 + timedelta(seconds=5))):
        block = (np.arange(2 * n_rows, dtype=np.float64).reshape(2, n_rows) + 0.1) / 7
        given = {"tenure": block[0].tolist(), "plan": ["p"] * n_rows, "spend": block[1].tolist()}
        left = {"tenure": None, "plan": ["p"] * n_rows, "spend": None}
        parts = [("a", n_rows - 1, 0.5), ("b", 1, 0.5)]
        with InferenceLog(url, table=table, registry=metrics) as log:
            for features, ts in ((given, base), (left, base + timedelta(seconds=1))):
                log.record_batch(
                    parts, "churn", "3", features, [1] * n_rows, np.full((n_rows, 2), 0.5),
                    floats=block, float_names=("tenure", "spend"), ts=ts,
                )  # fmt: skip
        assert (log.rows_written, log.rows_dropped_invalid) == (2 * n_rows, 0)
        frame = read_window(url, since=base, until=base + timedelta(seconds=2), table=table, probabilities=True)
        first, second = frame[frame["ts"] == base], frame[frame["ts"] == base + timedelta(seconds=1)]
        for column in ("request_id", "tenure", "plan", "spend", "prediction", "probabilities", "latency_ms"):
            assert first[column].tolist() == second[column].tolist(), column
        assert second["tenure"].tolist() == block[0].tolist() and second["spend"].tolist() == block[1].tolist()


def test_a_joined_row_whose_requests_do_not_add_up_is_named(tmp_path: Path, metrics: CollectorRegistry) -> None:
    """Given a joined table row whose `requests` were changed to hold fewer rows than it does, then read_window
    names the row's first request and both counts instead of misattributing predictions."""
    url = sqlite_url(tmp_path / "log.db")
    with InferenceLog(url, registry=metrics) as log:
        log.record_batch([("a", 1, 0.5), ("b", 2, 0.5)], "churn", "3", {"x": [1.0, 2.0, 3.0]}, [0, 1, 0], None, ts=T0)
    with sqlite3.connect(tmp_path / "log.db") as connection:
        connection.execute("""UPDATE inference_log SET requests = '[["a", 1, 0.5], ["b", 1, 0.5]]'""")
    with pytest.raises(InferenceLogError, match=r"the row of request 'a' holds 3 rows for requests of \[1, 1\] rows"):
        read_window(url, since=T0)


@pytest.mark.parametrize("rows", [_BINARY_MIN_ROWS - 1, _BINARY_MIN_ROWS, 100])
def test_float_features_of_larger_requests_are_stored_as_bytes_and_read_back(
    store: tuple[str, str], metrics: CollectorRegistry, rows: int
) -> None:
    """Given requests of 9, 10 and 100 rows as the service records them (its feeds, the float features named),
    then from 10 rows on the floats are stored as float64 bytes and the others as JSON, and read_window returns
    every value as sent, in the feature order; below 10 rows everything is JSON (cheaper there)."""
    import numpy as np

    url, table = store
    rng = np.random.default_rng(rows)
    features = {
        "tenure": rng.normal(size=rows).tolist(),
        "plan": [f"p{i % 3}" for i in range(rows)],
        "seats": list(range(rows)),  # an int feature keeps its type (in JSON)
        "spend": (rng.normal(size=rows) * 1e6).tolist(),
    }
    feeds = model_feeds([("tenure", "float"), ("plan", "str"), ("seats", "int"), ("spend", "float")], features)
    probabilities = rng.random((rows, 3))
    with InferenceLog(url, table=table, registry=metrics) as log:
        log.record_columns(
            "r",
            "churn",
            "3",
            features,
            [0] * rows,
            probabilities,
            1.0,
            floats=feeds.floats,
            float_names=feeds.float_names,
            ts=T0,
        )
    engine = create_engine(url)
    with engine.connect() as connection:
        stored_features, numbers, stored_probabilities, probability_numbers = connection.execute(
            text(f'SELECT features, numbers, probabilities, probability_numbers FROM "{table}"')
        ).one()
    engine.dispose()
    stored = json.loads(stored_features) if isinstance(stored_features, str) else stored_features
    if rows < _BINARY_MIN_ROWS:
        assert (stored, numbers, probability_numbers) == (features, None, None)
        stored_probabilities = (
            json.loads(stored_probabilities) if isinstance(stored_probabilities, str) else stored_probabilities
        )
        assert stored_probabilities == probabilities.tolist()
    else:
        assert stored == {"tenure": None, "plan": features["plan"], "seats": features["seats"], "spend": None}
        assert bytes(numbers) == struct.pack(f"<{2 * rows}d", *features["tenure"], *features["spend"])
        assert stored_probabilities is None
        assert bytes(probability_numbers) == struct.pack(f"<{3 * rows}d", *probabilities.ravel())
    frame = read_window(url, since=T0, table=table, probabilities=True)
    assert list(frame.columns[:4]) == ["tenure", "plan", "seats", "spend"]
    assert frame["probabilities"].tolist() == probabilities.tolist()
    assert {name: frame[name].tolist() for name in features} == features


def test_numbers_follow_the_layouts_feature_order_whatever_the_blocks_order() -> None:
    """Given a float block whose rows are in another order than the request's features, then `numbers` holds the
    values in the order of the layout's null features (what read_window walks), and a block that does not fit
    the request is refused with the shapes named."""
    import numpy as np

    from serving.inference_log import _numbers

    features = {"a": [1.0, 2.0], "plan": ["x", "y"], "b": [3.0, 4.0]}
    for names, block in ((("a", "b"), [[1.0, 2.0], [3.0, 4.0]]), (("b", "a"), [[3.0, 4.0], [1.0, 2.0]])):
        layout, data = _numbers(features, np.array(block), names, 2)
        assert layout == {"a": None, "plan": ["x", "y"], "b": None}
        assert data == struct.pack("<4d", 1.0, 2.0, 3.0, 4.0)
    with pytest.raises(ValueError, match=r"shape \(2, 3\) do not hold 2 values"):
        _numbers(features, np.zeros((2, 3)), ("a", "b"), 2)
    with pytest.raises(ValueError, match="not distinct features of the request"):
        _numbers(features, np.zeros((2, 2)), ("a", "c"), 2)


def test_stored_times_are_the_sqlite_datetime_processors_text() -> None:
    """Given epoch microseconds across seconds, days, a leap day and before 1970, then the writer's cached
    formatting gives exactly the text SQLAlchemy's SQLite DATETIME processor gives for the same datetime; a
    processor of another format is called for every value."""
    from sqlalchemy.dialects import sqlite

    from serving.inference_log import _from_epoch_us, _StoredTimes

    dialect = sqlite.dialect()
    processor = inference_log_table(MetaData()).c.ts.type.dialect_impl(dialect).bind_processor(dialect)
    assert processor is not None
    stored = _StoredTimes(processor)
    base = 1_764_460_799_999_998  # 2025-11-29 23:59:59.999998 UTC
    values = [base + step for step in range(6)] + [951_825_600_000_000, 0, -1, -1_000_000, 1_000_000, base]
    for value in values:
        assert stored(value) == processor(_from_epoch_us(value)), value
    other = _StoredTimes(lambda ts: ts.isoformat())
    assert other(base) == _from_epoch_us(base).isoformat()
    assert _StoredTimes(None)(base) == _from_epoch_us(base)


def test_sqlites_direct_insert_stores_what_sqlalchemys_types_store(tmp_path: Path, metrics: CollectorRegistry) -> None:
    """Given the same requests (columnar and row lists; numpy values, NaN, infinity, a None prediction, no
    probabilities, an integer beyond 64 bits, the floats of a request large enough to go in bytes) written once
    through the SQLite fast path (one multi-row INSERT) and once through SQLAlchemy's typed insert, then every
    stored value is identical, one table row per request."""
    import numpy as np

    entries: list[LoggedRequest | list[LoggedRow]] = [
        LoggedRequest(
            request_id="cols",
            model_name="churn",
            model_version="3",
            features={"tenure": np.array([1.5, np.nan, np.inf], dtype=np.float32), "plan": ["pro", None, "x"]},
            predictions=[np.int64(1), None, 2**70],
            latency_ms=np.float64(2.5),
            probabilities=np.array([[0.1, 0.9], [0.5, 0.5], [1.0, 0.0]]),
            ts=T0,
        ),
        LoggedRequest("noproba", "churn", "3", {"tenure": [3.0]}, [0.25], 1.0, None, T0 + timedelta(seconds=1)),
        request_rows("rows", 2, ts=(T0 + timedelta(seconds=2)).replace(tzinfo=None)),
        LoggedRequest(
            "wide",
            "churn",
            "3",
            {"tenure": np.array([1.5, np.nan, np.inf, *range(7)], dtype=np.float32), "plan": ["pro"] * 10},
            [1] * 10,
            1.0,
            np.array([[0.25, 0.75]] * 9 + [[np.nan, 1.0]], dtype=np.float32),
            T0 + timedelta(seconds=3),
        ),
    ]
    stored = []
    for fast in (True, False):
        url = sqlite_url(tmp_path / f"fast-{fast}.db")
        log = InferenceLog(url, registry=metrics)
        assert log._sqlite  # SQLite takes the fast path (one multi-row INSERT per batch) by default
        if not fast:
            log._sqlite = False  # SQLAlchemy's executemany with the table's types, as for PostgreSQL
        with log:
            for entry in entries:
                if isinstance(entry, LoggedRequest):
                    log.record_request(entry)
                else:
                    log.record(entry)
        assert (log.rows_written, log.rows_dropped) == (16, 0)
        with sqlite3.connect(tmp_path / f"fast-{fast}.db") as connection:
            stored.append(connection.execute("SELECT * FROM inference_log ORDER BY id").fetchall())
    assert stored[0] == stored[1]
    requests = [(n, json.loads(f), p) for (_, _, _, _, _, n, f, _, p, *_) in stored[0]]
    # NaN and infinity are null; orjson refuses 2**70 and the standard library encodes it
    assert requests[0] == (
        3,
        {"tenure": [1.5, None, None], "plan": ["pro", None, "x"]},
        "[1,null,1180591620717411303424]",
    )
    assert requests[1] == (1, {"tenure": [3.0]}, "[0.25]")
    assert requests[2][:2] == (2, {"tenure": [0.0, 1.0], "plan": ["basic", "pro"]})
    assert [row[9] for row in stored[0]][1] is None  # no probabilities: SQL NULL
    # From 10 rows on, float features are float64 bytes (NaN and infinity kept), null in the JSON
    assert [row[7] for row in stored[0]][:3] == [None] * 3
    assert (requests[3][1], stored[0][3][7]) == (
        {"tenure": None, "plan": ["pro"] * 10},
        struct.pack("<10d", 1.5, math.nan, math.inf, *range(7)),
    )


def test_a_writer_locked_out_by_another_connection_waits_and_loses_nothing(
    sqlite_store: tuple[str, str], metrics: CollectorRegistry
) -> None:
    """Given another connection holding SQLite's write lock for 1 s, then record() stays fast and no row is lost."""
    url, table = sqlite_store
    log = InferenceLog(url, table=table, batch_rows=50, flush_interval_s=0.01, registry=metrics).start()
    log.record(request_rows("warm-up", 5))
    deadline = time.monotonic() + 10
    while log.rows_written < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    blocker = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the write lock, as another worker's long transaction would hold it
    durations = []
    try:
        for i in range(100):
            durations.append(timed_record(log, request_rows(f"locked-{i}", 10)))
            time.sleep(0.01)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    log.close(timeout_s=30)

    assert_fast(durations)
    assert (log.rows_written, log.rows_dropped) == (1005, 0)
    assert count_rows(url, table) == 1005


# ---------------------------------------------------------------- an unavailable store


@pytest.fixture(params=["postgresql-closed-port", "sqlite-unwritable-path"])
def dead_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store that cannot be written: PostgreSQL on a closed port, or SQLite under a regular file."""
    if request.param == "postgresql-closed-port":
        return f"postgresql+psycopg2://slipway@127.0.0.1:{closed_port()}/test"
    (tmp_path / "not-a-directory").write_text("")
    return sqlite_url(tmp_path / "not-a-directory" / "inference_log.db")


def test_unavailable_store_drops_and_counts_rows_without_slowing_requests(
    dead_url: str, metrics: CollectorRegistry, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given a store that cannot be reached, then record() stays under 5 ms, raises nothing, and every row is
    counted as dropped with one rate-limited warning (plus the close() summary), not one per batch."""
    caplog.set_level(logging.INFO, logger="slipway.inference_log")
    log = InferenceLog(dead_url, batch_rows=100, flush_interval_s=0.01, registry=metrics).start()
    durations = []
    for i in range(1000):
        durations.append(timed_record(log, request_rows(f"r{i}", 10)))
        if i % 50 == 0:
            time.sleep(0.01)  # let the writer fail batches while we keep recording
    log.close(timeout_s=30)

    assert log.rows_recorded == 10_000
    assert log.rows_written == 0
    assert log.rows_dropped == 10_000
    assert log.rows_dropped_write_failed > 0
    dropped = sum(
        sample(metrics, "slipway_inference_log_rows_dropped_total", reason=reason)
        for reason in ("queue_full", "write_failed", "closed")
    )
    assert dropped == 10_000
    warnings = warnings_of(caplog)
    assert 1 <= len(warnings) <= 2, [w.getMessage() for w in warnings]
    assert "dropped" in warnings[0].getMessage() and "write_failed=" in warnings[0].getMessage()
    assert "10000 dropped" in warnings[-1].getMessage()
    assert log.last_error is not None
    assert_fast(durations)
    with capsys.disabled():
        print(f"\n[inference log] dead store {dead_url.split(':')[0]}: {describe(durations)}; error: {log.last_error}")


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_rows_queued_while_the_store_is_down_are_written_when_it_is_back(
    tmp_path: Path, metrics: CollectorRegistry
) -> None:
    """Given a store that fails one batch, when it comes back, then the failed batch is counted as lost and
    the rows recorded during the pause are written, without waiting for close()."""
    blocker = tmp_path / "logs"
    blocker.write_text("")  # a file where the database's directory should be
    log = InferenceLog(sqlite_url(blocker / "inference_log.db"), flush_interval_s=0.01, registry=metrics).start()
    log.record(request_rows("lost", 5))
    assert wait_until(lambda: log.rows_dropped_write_failed == 5)
    log.record(request_rows("kept", 20))  # the writer is pausing: these wait in the queue
    blocker.unlink()

    assert wait_until(lambda: log.rows_written == 20)
    log.close()
    assert (log.rows_written, log.rows_dropped_write_failed, log.rows_dropped) == (20, 5, 5)
    assert count_rows(sqlite_url(blocker / "inference_log.db"), "inference_log") == 20


def test_a_request_that_cannot_be_logged_is_dropped_alone(
    sqlite_store: tuple[str, str], metrics: CollectorRegistry
) -> None:
    """Given one request whose rows cannot be stored (a latency that is no number), then only it is lost,
    counted as `invalid` with the error, and the requests around it are written."""
    url, table = sqlite_store
    bad = [replace(row, latency_ms="fast") for row in request_rows("bad", 5)]  # type: ignore[arg-type]
    with InferenceLog(url, table=table, batch_rows=5, registry=metrics) as log:
        log.record(request_rows("before", 5))
        log.record(bad)
        log.record(request_rows("after", 5))
    assert (log.rows_written, log.rows_dropped_invalid, log.rows_dropped) == (10, 5, 5)
    assert sample(metrics, "slipway_inference_log_rows_dropped_total", reason="invalid") == 5
    assert log.last_error is not None and "'bad' not loggable: ValueError" in log.last_error
    assert read_window(url, since=T0, table=table)["request_id"].unique().tolist() == ["before", "after"]


def test_password_never_appears_in_logs(
    pg_base_url: str, metrics: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """Given URLs carrying a password (a working one and a dead one), then no log line and no repr shows it."""
    caplog.set_level(logging.DEBUG)
    password = "s3cr3t-Pw-1234"  # trust auth ignores it, so the working URL still connects
    working = pg_base_url.replace("@", f":{password}@")
    dead = f"postgresql+psycopg2://slipway:{password}@127.0.0.1:{closed_port()}/test"
    table = f"il_{uuid.uuid4().hex[:12]}"
    try:
        for url in (working, dead):
            log = InferenceLog(url, table=table, registry=CollectorRegistry()).start()
            log.record(request_rows("r", 3))
            log.close(timeout_s=20)
            assert password not in repr(log)
    finally:
        engine = create_engine(pg_base_url)
        with engine.begin() as connection:
            connection.execute(text(f'DROP TABLE IF EXISTS "{table}"'))
        engine.dispose()
    assert "***" in caplog.text
    assert password not in caplog.text


# ---------------------------------------------------------------- queue bounds, lifecycle, metrics


def test_queue_full_drops_are_counted_and_reported(
    sqlite_store: tuple[str, str], metrics: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a queue of 100 rows and no writer yet, when 150 rows arrive, then 50 are dropped as queue_full,
    counted, reported at close, and the 100 queued rows are still written."""
    url, table = sqlite_store
    log = InferenceLog(url, table=table, max_queue_rows=100, registry=metrics)  # not started: nothing drains
    for i in range(15):
        log.record(request_rows(f"r{i}", 10))
    assert (log.queue_rows, log.rows_dropped_queue_full) == (100, 50)
    assert sample(metrics, "slipway_inference_log_rows_dropped_total", reason="queue_full") == 50
    assert sample(metrics, "slipway_inference_log_queue_rows") == 100

    log.close()

    assert (log.rows_written, count_rows(url, table)) == (100, 100)
    assert sample(metrics, "slipway_inference_log_queue_rows") == 0
    assert any("queue_full=50" in w.getMessage() for w in warnings_of(caplog))


def test_the_queue_is_also_bounded_in_memory(sqlite_store: tuple[str, str], metrics: CollectorRegistry) -> None:
    """Given a queue of 100,000 rows but 20 KB, when 100-row requests (a few KB each) arrive with no writer yet,
    then those that would take it past 20 KB are dropped as queue_full and counted, far below the row bound, and
    the queued ones are written at close."""
    url, table = sqlite_store
    log = InferenceLog(url, table=table, max_queue_bytes=20_000, registry=metrics)  # not started: nothing drains
    for i in range(20):
        log.record(request_rows(f"r{i}", 100))
    queued = log.queue_rows
    assert 0 < queued < 2000 and queued % 100 == 0
    assert log.rows_dropped_queue_full == 2000 - queued
    assert sample(metrics, "slipway_inference_log_rows_dropped_total", reason="queue_full") == 2000 - queued
    log.close()
    assert (log.rows_written, count_rows(url, table)) == (queued, queued)


def test_a_wake_writes_full_batches_and_leaves_a_partial_one_queued(
    sqlite_store: tuple[str, str], metrics: CollectorRegistry
) -> None:
    """Given 25 queued requests and batches of 10, when the writer drains after a wake (full batches only), then
    20 are written and 5 stay queued for the next full batch or the flush interval; a timed-out wait or close()
    writes them."""
    url, table = sqlite_store
    log = InferenceLog(url, table=table, batch_rows=10, registry=metrics)  # not started: drained by hand
    for i in range(25):
        log.record(request_rows(f"r{i}", 1))
    log._drain(full_only=True)
    assert (log.rows_written, log.queue_rows, count_rows(url, table)) == (20, 5, 20)
    log._drain(full_only=True)
    assert (log.rows_written, log.queue_rows) == (20, 5)
    log.close()
    assert (log.rows_written, log.queue_rows, log.rows_dropped, count_rows(url, table)) == (25, 0, 0, 25)


def test_a_batch_is_also_full_at_a_fifth_of_the_queue_bound_in_predicted_rows(
    sqlite_store: tuple[str, str], metrics: CollectorRegistry
) -> None:
    """Given a queue bound of 1,000 predicted rows (a full batch: 500 table rows or 200 predicted rows) and seven
    100-row requests, when the writer drains after a wake, then it writes batches of two requests and leaves the
    last one queued. By table rows alone nothing was ever full: 500 requests of 100 rows outnumber the bound, so
    only the flush interval wrote, and a busy worker's queue reached the bound in between and dropped rows."""
    url, table = sqlite_store
    log = InferenceLog(url, table=table, batch_rows=500, max_queue_rows=1000, registry=metrics)  # drained by hand
    sizes: list[int] = []
    write = log._write

    def counted(entries: list[Any], n_rows: int, n_bytes: int) -> bool:
        sizes.append(n_rows)
        return write(entries, n_rows, n_bytes)

    log._write = counted  # type: ignore[method-assign]  # observes the batches, writes them for real
    for i in range(7):
        log.record(request_rows(f"r{i}", 100))
    log._drain(full_only=True)
    assert sizes == [200, 200, 200]
    assert (log.rows_written, log.queue_rows, count_rows(url, table)) == (600, 100, 600)
    log.close()
    assert (log.rows_written, log.rows_dropped) == (700, 0)


def test_rows_enough_for_a_full_batch_wake_the_writer_before_its_flush_interval(
    sqlite_store: tuple[str, str], metrics: CollectorRegistry
) -> None:
    """Given a running writer that flushes every 30 s, when three 100-row requests arrive (a full batch is 200
    predicted rows), then they are written within seconds, not at the flush interval."""
    url, table = sqlite_store
    log = InferenceLog(url, table=table, max_queue_rows=1000, flush_interval_s=30.0, registry=metrics)
    log.start()
    try:
        for i in range(3):
            log.record(request_rows(f"r{i}", 100))
        deadline = time.monotonic() + 5.0
        while log.rows_written < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.rows_written >= 200, f"{log.rows_written} rows written 5 s after a full batch was queued"
    finally:
        log.close()
    assert (log.rows_written, log.rows_dropped, count_rows(url, table)) == (300, 0, 300)


def test_under_steady_load_the_writer_writes_full_batches(
    sqlite_store: tuple[str, str], metrics: CollectorRegistry
) -> None:
    """Given one-row requests arriving for a second at a busy worker's pace (one every ~0.3 ms), then every batch
    the writer writes is a full one, but for the rest written at close. Writing whatever was queued each time
    round made it chase the requests: 50, 17, 2, 1, 1, 1, 50, 2, 1, 1, ... here, a transaction and a GIL hand-off
    per handful of rows (94 against 12 us of writer CPU per one-row request, measured)."""
    url, table = sqlite_store
    log = InferenceLog(url, table=table, batch_rows=50, flush_interval_s=30.0, registry=metrics)
    sizes: list[int] = []
    write = log._write

    def counted(entries: list[Any], n_rows: int, n_bytes: int) -> bool:
        sizes.append(len(entries))
        return write(entries, n_rows, n_bytes)

    log._write = counted  # type: ignore[method-assign]  # observes the batches, writes them for real
    log.start()
    requests = 0
    deadline = time.perf_counter() + 1.0
    while time.perf_counter() < deadline:
        time.sleep(0.0002)  # like a server's request thread, it lets go of the GIL between requests
        log.record(request_rows(f"r{requests}", 1))
        requests += 1
    written_before_close = sum(sizes)
    log.close()
    assert written_before_close >= 10 * 50, f"only {written_before_close} of {requests} rows written under load"
    assert set(sizes[:-1]) == {50}, f"batch sizes under load: {sizes[:-1]}"
    assert (log.rows_written, log.rows_dropped, count_rows(url, table)) == (requests, 0, requests)


def test_close_is_idempotent_and_later_records_are_counted(
    sqlite_store: tuple[str, str], metrics: CollectorRegistry
) -> None:
    """Given a closed log, then closing again is harmless, start() refuses, and late rows are counted as closed."""
    url, table = sqlite_store
    log = InferenceLog(url, table=table, registry=metrics)
    with log:
        log.record(request_rows("r", 4))
    log.close()
    log.record(request_rows("late", 3))
    assert (log.rows_written, log.rows_dropped_closed) == (4, 3)
    assert sample(metrics, "slipway_inference_log_rows_dropped_total", reason="closed") == 3
    with pytest.raises(RuntimeError, match="closed"):
        log.start()


def test_two_instances_in_one_process_share_the_metrics(tmp_path: Path) -> None:
    """Given two logs on the default registry (as in a worker), then neither raises and both counts add up."""
    before = sample(REGISTRY, "slipway_inference_log_rows_written_total")
    first = InferenceLog(sqlite_url(tmp_path / "a.db"))
    second = InferenceLog(sqlite_url(tmp_path / "b.db"))
    with first, second:
        first.record(request_rows("a", 2))
        second.record(request_rows("b", 5))
    assert (first.rows_written, second.rows_written) == (2, 5)
    assert sample(REGISTRY, "slipway_inference_log_rows_written_total") - before == 7


MULTIPROCESS_SCRIPT = """
import json, sys
from prometheus_client import CollectorRegistry, multiprocess
from serving.inference_log import InferenceLog, LoggedRow, sqlite_url
first = InferenceLog(sqlite_url(sys.argv[1] + "/a.db")).start()
second = InferenceLog(sqlite_url(sys.argv[1] + "/b.db")).start()
row = LoggedRow("r", "m", "1", 0, {"x": 1.0}, 1, 0.1)
first.record([row] * 30)
second.record([row] * 12)
first.close()
second.close()
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
print(json.dumps({"written": registry.get_sample_value("slipway_inference_log_rows_written_total")}))
"""


def test_metrics_add_up_in_prometheus_multiprocess_mode(tmp_path: Path) -> None:
    """Given PROMETHEUS_MULTIPROC_DIR (as BentoML sets in workers) and two logs in one process, then the
    aggregated counter is the sum of both (no instance overwrites the other's value in the mmap file)."""
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_SCRIPT, str(tmp_path)],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"written": 42.0}


WORKER_SCRIPT = """
import json, sys
from serving.inference_log import InferenceLog, LoggedRow
url, worker, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
log = InferenceLog(url, batch_rows=50, flush_interval_s=0.005).start()
for i in range(requests):
    log.record([LoggedRow(f"{worker}-{i}", "m", "1", j, {"x": float(j)}, j, 0.1) for j in range(10)])
log.close(timeout_s=60)
print(json.dumps({"written": log.rows_written, "dropped": log.rows_dropped, "error": log.last_error}))
"""


def test_worker_processes_share_one_sqlite_file_while_monitoring_reads(tmp_path: Path) -> None:
    """Given 3 worker processes writing small batches to one SQLite file and a reader polling it, then every
    row lands (WAL, busy timeout and retry absorb the write-lock contention) and the reader is never blocked."""
    url = sqlite_url(tmp_path / "shared.db")
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT, url, f"w{w}", "400"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(3)
    ]
    reads = []
    deadline = time.monotonic() + 90
    while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
        try:
            started = time.perf_counter()
            frame = read_window(url, since=T0 - timedelta(days=365 * 100))
            reads.append((time.perf_counter() - started, len(frame)))
        except InferenceLogError:  # no worker has created the table yet
            pass
        time.sleep(0.05)
    outputs = [w.communicate(timeout=max(1.0, deadline - time.monotonic())) for w in workers]

    for worker, (stdout, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr
        assert json.loads(stdout.splitlines()[-1]) == {"written": 4000, "dropped": 0, "error": None}
    assert count_rows(url, "inference_log") == 12_000
    assert reads, "the reader never saw the table"
    assert all(n_rows <= 12_000 for _, n_rows in reads)


# ---------------------------------------------------------------- PostgreSQL: binary COPY


def pg_execute(url: str, *statements: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


def test_postgresql_batches_go_in_as_binary_copy_and_read_back_exactly(
    pg_store: tuple[str, str], metrics: CollectorRegistry
) -> None:
    """Given slipway's own table on PostgreSQL, then batches are written with binary COPY, and every column reads
    back exactly: the time to the microsecond, ids and versions (non-ASCII too), latency, JSON and bytes."""
    url, table = pg_store
    ts = datetime(2026, 11, 30, 21, 15, 7, 123456, tzinfo=UTC)
    with InferenceLog(url, table=table, registry=metrics) as log:
        log.record(request_rows("réq-1", 3, model_version="v-ü", ts=ts))
        log.record(request_rows("req-2", 1, ts=ts + timedelta(microseconds=1)))
        import numpy as np

        block = np.arange(60, dtype=np.float64).reshape(3, 20) / 7
        features = {name: block[i].tolist() for i, name in enumerate(("a", "b", "c"))}
        log.record_columns(
            "req-3", "churn", "3", features, [1] * 20, None, 2.25, floats=block, float_names=("a", "b", "c"), ts=ts
        )
    assert log._copy, "slipway's table on PostgreSQL through psycopg2 should take binary COPY"
    assert (log.rows_written, log.rows_dropped) == (24, 0)
    frame = read_window(url, since=ts - timedelta(seconds=1), table=table, probabilities=True)
    first = frame[frame["request_id"] == "réq-1"]
    assert list(first["ts"]) == [ts] * 3 and set(first["model_version"]) == {"v-ü"}
    assert first["plan"].tolist() == ["basic", "pro", "basic"] and first["latency_ms"].tolist() == [1.5] * 3
    assert frame[frame["request_id"] == "req-2"]["ts"].tolist() == [ts + timedelta(microseconds=1)]
    third = frame[frame["request_id"] == "req-3"]
    assert {name: third[name].tolist() for name in ("a", "b", "c")} == features
    assert third["latency_ms"].tolist() == [2.25] * 20 and third["probabilities"].tolist() == [None] * 20


def test_a_postgresql_table_of_other_column_types_gets_inserts(
    pg_store: tuple[str, str], metrics: CollectorRegistry
) -> None:
    """Given a log table someone created with the time without a time zone and latency as REAL (binary COPY would
    not fit them), then the writer uses INSERTs and every row lands."""
    url, table = pg_store
    metadata = MetaData()
    inference_log_table(metadata, table).create(create_engine(url))
    pg_execute(
        url,
        f'ALTER TABLE "{table}" ALTER COLUMN ts TYPE TIMESTAMP WITHOUT TIME ZONE',
        f'ALTER TABLE "{table}" ALTER COLUMN latency_ms TYPE REAL',
    )

    with InferenceLog(url, table=table, registry=metrics) as log:
        log.record(request_rows("r", 4, ts=T0))

    assert not log._copy and (log.rows_written, log.rows_dropped) == (4, 0)
    assert count_rows(url, table) == 4


def test_a_batch_postgresql_refuses_is_dropped_and_counted_and_the_next_one_lands(
    pg_store: tuple[str, str], metrics: CollectorRegistry
) -> None:
    """Given a table whose CHECK refuses one request, when a batch holding it is copied, then that batch is dropped
    (write_failed, counted, no retry: the rows, not the store, are at fault) and the next batch is written."""
    url, table = pg_store
    inference_log_table(MetaData(), table).create(create_engine(url))
    pg_execute(url, f"""ALTER TABLE "{table}" ADD CONSTRAINT no_bad CHECK (request_id <> 'bad')""")
    log = InferenceLog(url, table=table, registry=metrics, batch_rows=2).start()
    log.record(request_rows("good-1", 1))
    log.record(request_rows("bad", 1))
    assert wait_until(lambda: log.rows_dropped == 2)
    log.record(request_rows("good-2", 1))
    log.record(request_rows("good-3", 1))
    log.close(timeout_s=30)

    assert log._copy
    assert (log.rows_written, log.rows_dropped_write_failed) == (2, 2)
    assert "CheckViolation" in (log.last_error or "") or "IntegrityError" in (log.last_error or ""), log.last_error
    assert sample(metrics, "slipway_inference_log_rows_dropped_total", reason="write_failed") == 2
    assert count_rows(url, table) == 2


# ---------------------------------------------------------------- retention


def log_requests(url: str, table: str, metrics: CollectorRegistry, stamps: list[tuple[str, datetime, int]]) -> None:
    """Write one request per (request id, time, rows) through the real writer, and wait for it."""
    log = InferenceLog(url, table=table, registry=metrics).start()
    for request_id, ts, n in stamps:
        log.record(request_rows(request_id, n, ts=ts))
    log.close(timeout_s=30)
    assert log.rows_dropped == 0


def test_prune_deletes_the_requests_before_the_cutoff_in_chunks_and_keeps_the_rest(
    store: tuple[str, str], metrics: CollectorRegistry
) -> None:
    """Given 7 requests logged 40 days ago and 3 logged today, when the log is pruned at 30 days in chunks of 3,
    then the 7 old ones (and only they) are gone, counted in requests and predictions, and progress was reported
    per chunk."""
    url, table = store
    now = datetime.now(UTC)
    old = [(f"old-{i}", now - timedelta(days=40, minutes=i), 1 + i) for i in range(7)]
    new = [(f"new-{i}", now - timedelta(minutes=i), 2) for i in range(3)]
    log_requests(url, table, metrics, old + new)
    progress: list[tuple[int, int]] = []

    counted = prune_log(url, now - timedelta(days=30), table, dry_run=True)
    cutoff = now - timedelta(days=30)
    result = prune_log(
        url, cutoff, table, chunk_requests=3, progress=lambda done, total: progress.append((done, total))
    )

    assert (counted.requests, counted.rows, counted.dry_run) == (7, 28, True)
    assert (result.requests, result.rows, result.found) == (7, 1 + 2 + 3 + 4 + 5 + 6 + 7, True)
    assert progress == [(3, 7), (6, 7), (7, 7)]
    kept = read_window(url, since=now - timedelta(days=365), table=table)
    assert sorted(set(kept["request_id"])) == ["new-0", "new-1", "new-2"]
    assert count_rows(url, table) == 6
    assert "deleted 7 log rows (28 predictions) logged before" in result.line()
    assert prune_log(url, now - timedelta(days=30), table).requests == 0  # nothing left to delete


def test_prune_of_a_log_that_does_not_exist_creates_nothing(tmp_path: Path) -> None:
    """Given no log file, when it is pruned, then nothing is created and the result says there was no log."""
    path = tmp_path / "never" / "inference_log.db"

    result = prune_log(sqlite_url(path), datetime.now(UTC))

    assert not result.found and result.requests == 0
    assert not path.exists() and not path.parent.exists()
    assert "no inference log at" in result.line()


def test_prune_beside_serving_writers_loses_no_new_row(tmp_path: Path, metrics: CollectorRegistry) -> None:
    """Given 20,000 old requests in a SQLite log and a writer logging new requests as fast as it can, when the old
    ones are pruned in chunks of 500 meanwhile, then the writer's batches land between the chunks (the prune never
    holds the write lock for the whole deletion), every new row is written and only the old ones are gone."""
    url, table = sqlite_url(tmp_path / "log.db"), "inference_log"
    old_ts = datetime.now(UTC) - timedelta(days=60)
    log_requests(url, table, metrics, [(f"old-{i}", old_ts + timedelta(seconds=i), 5) for i in range(20_000)])
    writer = InferenceLog(url, table=table, registry=metrics, batch_rows=50, flush_interval_s=0.01).start()
    stop = threading.Event()
    served = 0

    def serve() -> None:
        nonlocal served
        while not stop.is_set():
            writer.record(request_rows(f"new-{served}", 5))
            served += 1
            time.sleep(0.0002)

    thread = threading.Thread(target=serve)
    thread.start()
    written_at_chunk: list[int] = []
    try:
        result = prune_log(
            url,
            datetime.now(UTC) - timedelta(days=30),
            table,
            chunk_requests=500,
            progress=lambda _done, _total: written_at_chunk.append(writer.rows_written),
        )
    finally:
        stop.set()
        thread.join(timeout=30)
        writer.close(timeout_s=30)

    assert result.requests == 20_000 and len(written_at_chunk) == 40
    grew = sum(b > a for a, b in itertools.pairwise(written_at_chunk))
    assert grew >= 5, f"the writer wrote between only {grew} of 39 pairs of chunks: {written_at_chunk}"
    assert served > 0 and (writer.rows_written, writer.rows_dropped) == (served * 5, 0), writer.last_error
    assert count_rows(url, table) == served * 5


# ---------------------------------------------------------------- reading


def test_read_window_returns_one_column_per_feature_and_filters(
    store: tuple[str, str], metrics: CollectorRegistry
) -> None:
    """Given rows of two model versions over three hours (one feature NaN, one feature missing), then
    read_window returns the rows inside [since, until) of the asked version, features as columns, ts in UTC."""
    url, table = store
    with InferenceLog(url, table=table, registry=metrics) as log:
        log.record(request_rows("early", 2, ts=T0 - timedelta(hours=1)))
        log.record(request_rows("v3", 2, ts=T0 + timedelta(minutes=5)))
        log.record(request_rows("v4", 1, model_version="4", ts=T0 + timedelta(minutes=6)))
        log.record(
            [
                LoggedRow("odd", "churn", "3", 0, {"tenure": math.nan}, "yes", 4.0, None, T0 + timedelta(minutes=7)),
                LoggedRow("odd", "churn", "3", 1, {"plan": "pro"}, "no", 4.0, None, T0 + timedelta(minutes=7)),
            ]
        )
        log.record(request_rows("late", 2, ts=T0 + timedelta(hours=1)))

    frame = read_window(url, since=T0, until=T0 + timedelta(hours=1), model_version="3", table=table)

    assert list(frame.columns) == ["tenure", "plan", "prediction", "ts", "model_version", "request_id", "latency_ms"]
    assert frame["request_id"].tolist() == ["v3", "v3", "odd", "odd"]
    assert frame["prediction"].tolist() == [0, 1, "yes", "no"]
    assert frame["plan"].tolist()[:2] == ["basic", "pro"]
    assert frame["tenure"].isna().tolist() == [False, False, True, True]  # NaN stored as null, missing as NaN
    assert str(frame["ts"].dt.tz) == "UTC"
    assert frame["ts"].iloc[0] == T0 + timedelta(minutes=5)
    assert frame["latency_ms"].tolist() == [1.5, 1.5, 4.0, 4.0]

    # Same instant in another offset, and naive taken as UTC.
    eastern = timezone(timedelta(hours=-5))
    assert len(read_window(url, since=T0.astimezone(eastern), table=table)) == 7
    assert len(read_window(url, since=T0.replace(tzinfo=None), until=T0 + timedelta(minutes=6), table=table)) == 2


def test_find_request_finds_a_request_alone_in_its_row_or_among_the_requests_of_one_model_call(
    store: tuple[str, str], metrics: CollectorRegistry
) -> None:
    """Given a request logged alone, three answered by one model call (the middle one's id holds a LIKE wildcard,
    `_`, and another id matches it as a pattern), and an id a caller sent twice, then find_request returns each
    request's own rows with its latency and probabilities, both loggings of the repeated id, nothing for an
    unknown id, and nothing outside the asked time range."""
    import numpy as np

    url, table = store
    joined = {"tenure": [1.0, 2.0, 3.0, 4.0, 5.0], "plan": ["a", "b", "c", "d", "e"]}
    with InferenceLog(url, table=table, registry=metrics) as log:
        log.record(request_rows("solo", 2, ts=T0))
        log.record_batch(
            [("first", 1, 0.5), ("mid_1", 3, 0.75), ("midx1", 1, 1.0)], "churn", "3", joined, [0, 1, 0, 1, 0],
            np.arange(10, dtype=np.float64).reshape(5, 2) / 10, ts=T0 + timedelta(seconds=1),
        )  # fmt: skip
        log.record(request_rows("again", 1, ts=T0 + timedelta(minutes=1)))
        log.record(request_rows("again", 1, model_version="4", ts=T0 + timedelta(minutes=2)))

    middle = find_request(url, "mid_1", table=table)
    assert middle["request_id"].tolist() == ["mid_1"] * 3
    assert middle["tenure"].tolist() == [2.0, 3.0, 4.0] and middle["plan"].tolist() == ["b", "c", "d"]
    assert middle["prediction"].tolist() == [1, 0, 1]
    assert middle["probabilities"].tolist() == [[0.2, 0.3], [0.4, 0.5], [0.6, 0.7]]
    assert middle["latency_ms"].tolist() == [0.75] * 3
    assert middle["ts"].tolist() == [T0 + timedelta(seconds=1)] * 3
    assert find_request(url, "first", table=table)["tenure"].tolist() == [1.0]
    assert find_request(url, "midx1", table=table)["plan"].tolist() == ["e"]
    solo = find_request(url, "solo", since=T0, until=T0 + timedelta(seconds=1), table=table)
    assert solo["prediction"].tolist() == [0, 1]
    assert find_request(url, "again", table=table)["model_version"].tolist() == ["3", "4"]
    assert find_request(url, "nobody", table=table).empty
    assert find_request(url, "mid_1", since=T0 + timedelta(seconds=2), table=table).empty
    assert find_request(url, "mid_1", until=T0 + timedelta(seconds=1), table=table).empty


def test_read_window_names_what_is_missing(tmp_path: Path, sqlite_store: tuple[str, str]) -> None:
    """Given no database file, or a database without the table, then read_window says so (and creates nothing)."""
    missing = tmp_path / "nowhere.db"
    with pytest.raises(InferenceLogError, match="no inference log database"):
        read_window(sqlite_url(missing), since=T0)
    assert not missing.exists()
    sqlite3.connect(tmp_path / "empty.db").close()
    with pytest.raises(InferenceLogError, match="no table 'inference_log'"):
        read_window(sqlite_url(tmp_path / "empty.db"), since=T0)


def test_empty_window_has_the_metadata_columns(sqlite_store: tuple[str, str], metrics: CollectorRegistry) -> None:
    """Given no row in the window, then the frame is empty but still has the metadata columns."""
    url, table = sqlite_store
    with InferenceLog(url, table=table, registry=metrics) as log:
        log.record(request_rows("r", 1, ts=T0))
    frame = read_window(url, since=T0 + timedelta(days=1), table=table)
    assert frame.empty
    assert list(frame.columns) == ["prediction", "ts", "model_version", "request_id", "latency_ms"]


# ---------------------------------------------------------------- configuration


def test_from_env_is_disabled_without_a_url(metrics: CollectorRegistry) -> None:
    """Given no SLIPWAY_INFERENCE_LOG_URL (or an empty one), then there is no log."""
    assert InferenceLog.from_env({}, registry=metrics) is None
    assert InferenceLog.from_env({"SLIPWAY_INFERENCE_LOG_URL": "  "}, registry=metrics) is None


def test_from_env_reads_the_batch_knobs(tmp_path: Path, metrics: CollectorRegistry) -> None:
    """Given the URL and the batch knobs, then the log is built with them (and not started)."""
    log = InferenceLog.from_env(
        {
            "SLIPWAY_INFERENCE_LOG_URL": sqlite_url(tmp_path / "x.db"),
            "SLIPWAY_INFERENCE_LOG_BATCH_ROWS": "64",
            "SLIPWAY_INFERENCE_LOG_FLUSH_S": "0.25",
            "SLIPWAY_INFERENCE_LOG_QUEUE_MB": "8",
        },
        registry=metrics,
    )
    assert log is not None
    assert (log.batch_rows, log.flush_interval_s, log.table.name) == (64, 0.25, "inference_log")
    assert log.max_queue_bytes == 8 << 20
    log.close()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SLIPWAY_INFERENCE_LOG_BATCH_ROWS", "many"),
        ("SLIPWAY_INFERENCE_LOG_BATCH_ROWS", "0"),
        ("SLIPWAY_INFERENCE_LOG_BATCH_ROWS", "1.5"),
        ("SLIPWAY_INFERENCE_LOG_FLUSH_S", "-1"),
        ("SLIPWAY_INFERENCE_LOG_QUEUE_MB", "0"),
        ("SLIPWAY_INFERENCE_LOG_QUEUE_MB", "lots"),
        ("SLIPWAY_INFERENCE_LOG_FLUSH_S", "nan"),
    ],
)
def test_from_env_names_a_bad_knob(name: str, value: str, tmp_path: Path, metrics: CollectorRegistry) -> None:
    """Given a bad batch knob, then the error names the variable."""
    environ = {"SLIPWAY_INFERENCE_LOG_URL": sqlite_url(tmp_path / "x.db"), name: value}
    with pytest.raises(OptionsError, match=name):
        InferenceLog.from_env(environ, registry=metrics)


@pytest.mark.parametrize(
    "url", ["not a url", "postgresql+psycopg2://u:Hunter22@host:port/db", "nosuchdb://u:Hunter22@host/db"]
)
def test_from_env_names_a_bad_url_without_its_password(url: str, metrics: CollectorRegistry) -> None:
    """Given an unusable URL, then the error names the variable and does not echo the password."""
    with pytest.raises(OptionsError, match="SLIPWAY_INFERENCE_LOG_URL") as raised:
        InferenceLog.from_env({"SLIPWAY_INFERENCE_LOG_URL": url}, registry=metrics)
    assert "Hunter22" not in str(raised.value)


def test_a_bad_table_name_is_refused(tmp_path: Path, metrics: CollectorRegistry) -> None:
    """Given a table name that is not a plain identifier, then construction fails naming it."""
    with pytest.raises(ValueError, match="drop table"):
        InferenceLog(sqlite_url(tmp_path / "x.db"), table="drop table", registry=metrics)


def test_a_log_of_the_old_layout_is_named_not_misread(tmp_path: Path, metrics: CollectorRegistry) -> None:
    """Given a table written by an older slipway (one row per prediction), then reading it fails naming the
    table and what to do, and the writer drops its batches (counted) with that message as the error."""
    db = tmp_path / "inference_log.db"
    with sqlite3.connect(db) as connection:
        connection.execute(
            "CREATE TABLE inference_log (id INTEGER PRIMARY KEY, ts DATETIME, request_id TEXT, model_name TEXT, "
            "model_version TEXT, row_index INTEGER, features JSON, prediction JSON, probabilities JSON, "
            "latency_ms REAL)"
        )
    with pytest.raises(InferenceLogError, match=r"no column \['n_rows', 'predictions'\].*older slipway"):
        read_window(sqlite_url(db), since=T0)
    with InferenceLog(sqlite_url(db), registry=metrics) as log:
        log.record(request_rows("r", 3))
    assert (log.rows_written, log.rows_dropped_write_failed) == (0, 3)
    assert log.last_error is not None and "older slipway" in log.last_error


def test_a_log_without_the_numbers_column_gets_it_and_reads_old_and_new_rows(
    store: tuple[str, str], metrics: CollectorRegistry
) -> None:
    """Given a table of the layout before float features and probabilities went to bytes (columns `numbers`,
    `probability_numbers`; everything in the JSON) holding one request, then the writer adds the columns on its
    first batch, and read_window returns the old request and the new ones alike."""
    import numpy as np

    url, table = store
    if url.startswith("sqlite:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    engine = create_engine(url)
    old_table = inference_log_table(MetaData(), table)
    with engine.begin() as connection:
        old_table.create(connection)
        connection.execute(text(f'ALTER TABLE "{table}" DROP COLUMN numbers'))
        connection.execute(text(f'ALTER TABLE "{table}" DROP COLUMN probability_numbers'))
        connection.execute(text(f'ALTER TABLE "{table}" DROP COLUMN requests'))
        old_request = {"tenure": [7.0, 8.0], "plan": ["pro", "basic"]}
        connection.execute(
            old_table.insert().values(
                ts=T0,
                request_id="old",
                model_name="churn",
                model_version="3",
                n_rows=2,
                features=old_request,
                predictions=[0, 1],
                probabilities=[[0.5, 0.5], [0.25, 0.75]],
                latency_ms=1.5,
            )
        )
    assert len(read_window(url, since=T0, table=table, probabilities=True)) == 2  # readable before the writer

    with InferenceLog(url, table=table, registry=metrics) as log:
        log.record(request_rows("new", 10, ts=T0 + timedelta(seconds=1)))
        arr = T0 + timedelta(seconds=2)
        log.record_columns("arr", "churn", "3", {"tenure": [1.0] * 10}, [0] * 10, np.full((10, 2), 0.5), 1.0, ts=arr)
        joined = T0 + timedelta(seconds=3)
        two = [("j1", 1, 1.0), ("j2", 1, 2.0)]
        log.record_batch(two, "churn", "3", {"tenure": [5.0, 6.0]}, [0, 1], None, ts=joined)
    assert (log.rows_written, log.rows_dropped) == (22, 0)

    with engine.connect() as connection:
        added = {"numbers", "probability_numbers", "requests"}
        assert added <= {c["name"] for c in inspect(connection).get_columns(table)}
        counts = connection.execute(text(f'SELECT COUNT(numbers), COUNT(probability_numbers) FROM "{table}"')).one()
    engine.dispose()
    assert tuple(counts) == (1, 1)  # "new" has float features in bytes, "arr" an array of probabilities
    frame = read_window(url, since=T0, table=table, probabilities=True)
    assert frame["probabilities"].tolist() == [
        [0.5, 0.5],
        [0.25, 0.75],
        *([[0.25, 0.75]] * 10),
        *([[0.5, 0.5]] * 10),
        None,
        None,
    ]
    assert frame[frame["request_id"].isin(["j1", "j2"])][["request_id", "latency_ms"]].values.tolist() == [
        ["j1", 1.0],
        ["j2", 2.0],
    ]
    frame = frame[~frame["request_id"].isin(["arr", "j1", "j2"])]
    assert frame[["request_id", "tenure", "plan"]].values.tolist() == [
        ["old", 7.0, "pro"],
        ["old", 8.0, "basic"],
        *(["new", float(i), "pro" if i % 2 else "basic"] for i in range(10)),
    ]


def test_float_values_that_do_not_fit_their_request_are_named(tmp_path: Path, metrics: CollectorRegistry) -> None:
    """Given a request whose `numbers` hold fewer floats than its rows and float features need, then read_window
    fails naming the request instead of shifting values into other rows."""
    url = sqlite_url(tmp_path / "inference_log.db")
    with InferenceLog(url, registry=metrics) as log:
        log.record(request_rows("cut", 10, ts=T0))
    with sqlite3.connect(tmp_path / "inference_log.db") as connection:
        connection.execute("UPDATE inference_log SET numbers = substr(numbers, 1, 16)")
    with pytest.raises(InferenceLogError, match=r"request 'cut': 2 float values for 10 rows"):
        read_window(url, since=T0)


def test_probabilities_that_do_not_fit_their_request_are_named(tmp_path: Path, metrics: CollectorRegistry) -> None:
    """Given a request whose `probability_numbers` hold 3 values for 10 rows, then read_window with probabilities
    fails naming the request and the counts (and without them reads the request as before)."""
    import numpy as np

    url = sqlite_url(tmp_path / "inference_log.db")
    with InferenceLog(url, registry=metrics) as log:
        log.record_columns("cut", "churn", "3", {"plan": ["x"] * 10}, [0] * 10, np.full((10, 2), 0.5), 1.0, ts=T0)
    with sqlite3.connect(tmp_path / "inference_log.db") as connection:
        connection.execute("UPDATE inference_log SET probability_numbers = substr(probability_numbers, 1, 24)")
    assert len(read_window(url, since=T0)) == 10
    with pytest.raises(InferenceLogError, match=r"request 'cut': 3 probabilities for 10 rows"):
        read_window(url, since=T0, probabilities=True)


def test_a_batch_larger_than_one_sqlite_statement_is_written_whole(
    sqlite_store: tuple[str, str], metrics: CollectorRegistry
) -> None:
    """Given a batch of more requests than one multi-row INSERT may carry (SQLite's variable limit), then it is
    written in several statements of one transaction, every request once."""
    from serving.inference_log import _SQLITE_ROWS_PER_INSERT

    url, table = sqlite_store
    requests = _SQLITE_ROWS_PER_INSERT + 250
    log = InferenceLog(url, table=table, batch_rows=requests, max_queue_rows=requests, registry=metrics)
    for i in range(requests):  # not started: one batch when close() drains
        log.record(request_rows(f"r{i}", 1))
    log.close(timeout_s=60)
    assert (log.rows_written, log.rows_dropped, count_rows(url, table)) == (requests, 0, requests)
    with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
        ids = [r for (r,) in connection.execute(f"SELECT request_id FROM {table} ORDER BY id")]
    assert ids == [f"r{i}" for i in range(requests)]


def test_the_writer_does_not_keep_written_batches_in_memory(tmp_path: Path, metrics: CollectorRegistry) -> None:
    """Given batches of 40 different sizes of 100-row requests (~26 KB of JSON each), then the writer's memory
    stays flat: SQLite keeps a cached statement's last bound values, so a statement per batch size held one
    batch per size (the process grew by ~377 MiB here); power-of-two chunks keep it to 9 statements."""
    url = sqlite_url(tmp_path / "memory.db")
    log = InferenceLog(url, registry=metrics)
    request = LoggedRequest(
        request_id="big",
        model_name="churn",
        model_version="3",
        features={f"feature_{i}": [float(j) + 0.123456789 for j in range(100)] for i in range(30)},
        predictions=[1] * 100,
        latency_ms=1.0,
        probabilities=[[0.123456789, 0.876543211]] * 100,
        ts=T0,
    )
    log.record_request(request)
    log._write(list(log._queue), 100, _entry_bytes(log._queue[0]))  # warm: the table, the engine, one statement
    entry = log._queue[0]

    def rss_mib() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20

    before = rss_mib()
    for size in range(300, 500, 5):
        assert log._write([entry] * size, size * 100, size * _entry_bytes(entry))
    grown = rss_mib() - before
    assert grown < 100, f"the writer kept {grown:.0f} MiB after 40 batches"


def test_batches_are_cut_into_at_most_nine_statement_sizes() -> None:
    from serving.inference_log import _SQLITE_ROWS_PER_INSERT, _power_of_two_chunks

    sizes: set[int] = set()
    for count in range(0, 2_000):
        chunks = _power_of_two_chunks(count)
        assert [start for start, _ in chunks] == [sum(s for _, s in chunks[:i]) for i in range(len(chunks))]
        assert sum(size for _, size in chunks) == count
        sizes.update(size for _, size in chunks)
    assert sizes == {1 << i for i in range(9)} and max(sizes) == _SQLITE_ROWS_PER_INSERT


def _wide_request(request_id: str) -> LoggedRequest:
    """A 100-row request of 30 float features: ~25 KB in the log, as the benchmark's 100-row requests are."""
    return LoggedRequest(
        request_id=request_id,
        model_name="churn",
        model_version="3",
        features={f"feature_{i}": [float(j) + i / 7 for j in range(100)] for i in range(30)},
        predictions=[1] * 100,
        latency_ms=1.0,
        probabilities=None,
        ts=T0,
    )


def test_two_writers_keep_the_wal_small_and_a_reader_never_stalls_them(
    tmp_path: Path, metrics: CollectorRegistry
) -> None:
    """Given two writers (two workers) taking turns on one SQLite file, then each one's checkpoint after its own
    commits lets the WAL restart: it stays at a few MB where SQLite's passive checkpoints let it grow to 64 MB and
    more. And a reader holding a snapshot (a monitor run) neither stalls a writer nor loses a row: the checkpoint
    gives way to it and completes once it is gone."""
    path = tmp_path / "two-writers.db"
    url = sqlite_url(path)
    wal = Path(f"{path}-wal")
    first, second = (InferenceLog(url, registry=metrics) for _ in range(2))
    for index, log in enumerate((first, second)):
        log.record_request(_wide_request(f"warm-{index}"))
        assert log._write(list(log._queue), 100, _entry_bytes(log._queue[0]))
    entry = first._queue[0]
    batch = [entry] * 40  # ~1 MB a batch
    batch_bytes = 40 * _entry_bytes(entry)

    largest = 0
    for _ in range(25):  # ~50 MB in all, in turns
        for log in (first, second):
            assert log._write(batch, 40 * 100, batch_bytes)
            largest = max(largest, wal.stat().st_size)
    assert largest < 16 << 20, f"the WAL grew to {largest / 2**20:.0f} MB"
    assert first.checkpoints > 0 and second.checkpoints > 0
    with first._engine.connect() as connection:  # the checkpoint's busy timeout of 0 did not stay behind
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000

    reader = sqlite3.connect(path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT COUNT(*) FROM inference_log").fetchone()[0] > 0  # holds its snapshot
        completed = first.checkpoints
        started = time.perf_counter()
        for _ in range(6):
            assert first._write(batch, 40 * 100, batch_bytes)
        assert time.perf_counter() - started < 3.0  # a waiting checkpoint would take the 5 s busy timeout each
        assert first.checkpoints == completed  # gave way to the reader
    finally:
        reader.execute("COMMIT")
        reader.close()
    assert first._write(batch, 40 * 100, batch_bytes)
    assert first.checkpoints == completed + 1
    assert (first.rows_dropped, second.rows_dropped, first.checkpoint_errors) == (0, 0, 0)
    assert count_rows(url, "inference_log") == 100 * (2 + 40 * 50 + 40 * 7)
    for log in (first, second):
        log.close()


def _resident(path: Path, start: int, end: int) -> float:
    """The share of the file's pages in [start, end) that are in the page cache (mincore of a shared mapping)."""
    import ctypes
    import mmap
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    page = mmap.PAGESIZE
    start -= start % page
    length = end - start
    descriptor = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, descriptor, start)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vector = ctypes.create_string_buffer((length + page - 1) // page)
            assert libc.mincore(address, length, vector) == 0, os.strerror(ctypes.get_errno())
            return sum(byte & 1 for byte in vector.raw) / len(vector.raw)
        finally:
            libc.munmap(address, length)
    finally:
        os.close(descriptor)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="posix_fadvise and mincore as Linux has them")
def test_after_a_checkpoint_the_appended_pages_leave_the_page_cache_and_the_older_ones_stay(
    tmp_path: Path, metrics: CollectorRegistry
) -> None:
    """Given a log file of ~8 MB that is all in the page cache, when a new writer appends ~12 MB and checkpoints,
    then the pages it appended up to its last checkpoint are no longer cached (written once, read rarely: the
    page cache need not grow with the log), and the pages that were there before it stay cached (the indexes'
    leaves and inner pages that inserts read)."""
    path = tmp_path / "cache.db"
    url = sqlite_url(path)
    earlier = InferenceLog(url, registry=metrics)
    earlier.record_request(_wide_request("earlier"))
    entry = earlier._queue[0]
    for _ in range(8):
        assert earlier._write([entry] * 40, 40 * 100, 40 * _entry_bytes(entry))
    earlier.close()
    before = path.stat().st_size
    path.read_bytes()  # every page cached
    assert _resident(path, 0, before) > 0.9

    log = InferenceLog(url, registry=metrics)
    log.record_request(_wide_request("later"))
    assert log._write(list(log._queue), 100, _entry_bytes(log._queue[0]))
    for _ in range(12):
        assert log._write([entry] * 40, 40 * 100, 40 * _entry_bytes(entry))
    assert log.checkpoints >= 2 and log._dropped_upto is not None
    assert log._dropped_upto > before + (8 << 20)
    assert _resident(path, before, log._dropped_upto) < 0.1
    assert _resident(path, 0, before) > 0.9
    log.close()
