"""The inference log: every served prediction, in a SQL table monitoring reads.

One table row per request: its time, id, model and version, latency, the number of rows it predicted
(`n_rows`), and its features, predictions and probabilities as JSON in columns ({"feature": [values...]},
[predictions...], [[probabilities...]...]); `read_window` expands them back to one DataFrame row per
prediction. Or one table row per model call that answered several requests together (adaptive batching:
`record_batch`): their rows joined in those columns, and each request's id, row count and latency in the
JSON column `requests` ([[request_id, n_rows, latency_ms], ...] in row order; NULL for a single request, whose
own `request_id` and `latency_ms` the columns of the same names hold; a joined row holds its first request's
there). read_window gives every prediction its own request's id and latency either way. Writing one-row
requests joined seven to a row cost 5-7 us per request in all instead of 19-25 us (both threads, measured), and
from _BINARY_MIN_ROWS joined rows on their float features go as bytes.

A row per prediction would cost the writer a database row, a JSON document and an index entry
per predicted row: at 100-row requests that is ~100k rows a second on two cores, more than one writer thread
per worker can insert into SQLite beside the requests (it fell behind and dropped rows). A request's columns
are one JSON document whatever its size. In SQL, one row per prediction is
`json_each`/`json_array_elements` away. One exception: in a request of _BINARY_MIN_ROWS rows or more, the
float features the service names are stored as bytes (column `numbers`: float64, little-endian, one feature's
values after another's) and are null in the JSON, which keeps the feature order: writing 3,000 floats as JSON
text cost the request thread ~90 us, a third of what logging cost at 100 rows, and the bytes are one copy of
the block the model's float feeds are views of (serving.features.ModelFeeds). The class probabilities the
service gives as a float array go the same way (column `probability_numbers`, float64, row after row; the JSON
`probabilities` is NULL). read_window reads both forms.

Writing stays off the request's critical work: `InferenceLog.record_columns` (what the service calls for a
request predicted alone; `record_batch` for a joined call's requests; or `record_request`, `record`) encodes the
request as its table row (orjson and the float block's bytes: ~3 us for one row, ~11 us for 100) and appends it
to an in-memory deque under a lock held for a microsecond, and ONE daemon writer thread per process inserts them in
batches (up to `batch_rows` table rows and about a fifth of `max_queue_rows` predicted rows per transaction:
multi-row INSERTs on SQLite, binary COPY on PostgreSQL through psycopg2, SQLAlchemy's executemany elsewhere):
full batches as soon as either is waiting, whatever is left every `flush_interval_s`. The queue is bounded in
predicted rows (`max_queue_rows`) and in memory (`max_queue_bytes`, 64 MiB; SLIPWAY_INFERENCE_LOG_QUEUE_MB). Nothing
is ever silently lost: rows refused because the queue is full (`queue_full`), rows whose batch failed after a
bounded retry (`write_failed`), rows recorded after close or still queued when close() timed out (`closed`) and
requests whose values cannot be stored (`invalid`) are counted in attributes and in Prometheus, and the writer
thread logs a rate-limited warning with the count and the error (request threads never log).

A failing store: the failed batch is dropped, then the writer pauses (0.5, 1, 2, then 5 s) instead of
failing batch after batch in a loop that would burn the worker's CPU and GIL. Rows recorded meanwhile stay
queued and are written when the store is back (a restart or failover loses one batch, not the outage);
an outage longer than the queue can hold becomes `queue_full` drops. While the store keeps failing, each
batch gets one attempt (no retries) until one succeeds.

Storage is SQLAlchemy 2.0 Core: a SQLite file (``sqlite:////abs/path.db``) or PostgreSQL
(``postgresql+psycopg2://user:pw@host/db``). The table is created on the first write (create_all with
checkfirst, tolerant of another worker creating it at the same moment).

SQLite concurrency (several BentoML workers, one writer thread each, monitoring reading meanwhile):
- journal_mode=WAL, set by the writer on each new connection: readers never block the writer nor the
  writer the readers; writers still take turns on the database's single write lock.
- busy timeout 5 s (sqlite3 `timeout`): a writer waits for another worker's transaction instead of failing.
  Transactions are short (one INSERT of <= batch_rows requests), so the wait is normally milliseconds.
- "database is locked" that still escapes (timeout hit, or two workers switching to WAL at once) is an
  OperationalError: the batch is retried (3 attempts: now, after 50 ms, after 250 ms), then dropped and
  counted. Lost or refused PostgreSQL connections are retried the same way.
- synchronous=NORMAL: safe with WAL (no corruption); a power cut may lose the last commits, fine for a log.
- Checkpoints: each writer runs `wal_checkpoint(RESTART)` itself after every ~4 MB it commits, without waiting
  (busy timeout 0 for that call), then drops the pages appended to the database since the last time from the
  page cache (_checkpoint). With several writers SQLite's own passive checkpoints never let the WAL restart, and
  it grew to ~800 MB of pages the kernel had never cached before.
- page_size=65536 for a file the writer creates: a 100-row request (~25 KB) fits a page or two instead of a
  chain of 4 KiB overflow pages, each its own WAL frame and write() call.

A table of an earlier slipway without the `numbers` column gets it (ALTER TABLE ... ADD COLUMN, nullable) on
the writer's first batch; read_window reads such a table as it is.

Prometheus: the three metrics are created once per (process, registry) and shared by every InferenceLog
of that process, so a second instance never raises "Duplicated timeseries". In multiprocess mode (BentoML
sets PROMETHEUS_MULTIPROC_DIR in its workers) that sharing also matters for correctness: two metric
objects of one name in one process would overwrite each other's value in the per-process mmap file.
prometheus_client is imported only when the first InferenceLog is built, i.e. inside the worker.
Create the InferenceLog in the worker (the service's __init__), not at import: threads do not survive fork.
"""

from __future__ import annotations

import atexit
import gc
import io
import json
import logging
import math
import os
import re
import struct
import sys
import threading
import time
import weakref
from array import array
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    cast,
    create_engine,
    delete,
    event,
    func,
    inspect,
    null,
    select,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, NoSuchModuleError, OperationalError

from serving.options import OptionsError

if TYPE_CHECKING:
    import pandas as pd
    from prometheus_client import CollectorRegistry, Counter, Gauge

_LOG = logging.getLogger("slipway.inference_log")

URL_ENV = "SLIPWAY_INFERENCE_LOG_URL"
BATCH_ROWS_ENV = "SLIPWAY_INFERENCE_LOG_BATCH_ROWS"
FLUSH_S_ENV = "SLIPWAY_INFERENCE_LOG_FLUSH_S"
QUEUE_MB_ENV = "SLIPWAY_INFERENCE_LOG_QUEUE_MB"

DROP_REASONS = ("queue_full", "write_failed", "closed", "invalid")
# Read back by read_window next to the features; a feature of the same name would be ambiguous.
META_COLUMNS = ("prediction", "ts", "model_version", "request_id", "latency_ms")

_SQLITE_BUSY_TIMEOUT_S = 5.0
_PG_CONNECT_TIMEOUT_S = 5
_RETRY_DELAYS_S = (0.05, 0.25)  # 3 attempts in all
_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)  # pauses after consecutive failed batches; the last one repeats
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")  # room for "ix_<table>_model_version" in 63 chars


class InferenceLogError(RuntimeError):
    """The inference log cannot be read (no database, no table, ambiguous columns); the message says which."""


class InferenceLogUnreachable(InferenceLogError):
    """The log's store did not answer (refused or lost connection, locked or unreadable file): not "nothing logged"."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class LoggedRow:
    """One predicted row: its features as sent, what the model answered, and the request it came in."""

    request_id: str
    model_name: str
    model_version: str
    row_index: int
    features: Mapping[str, Any]
    prediction: Any
    latency_ms: float
    probabilities: Sequence[float] | None = None
    ts: datetime = field(default_factory=_utc_now)


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """One request in columns (feature -> values, as the predictor takes them); expanded by the writer thread."""

    request_id: str
    model_name: str
    model_version: str
    features: Mapping[str, Sequence[Any]]
    predictions: Sequence[Any]
    latency_ms: float
    probabilities: Sequence[Sequence[float]] | None = None
    ts: datetime = field(default_factory=_utc_now)

    @property
    def n_rows(self) -> int:
        """Rows in the request (one prediction each)."""
        return len(self.predictions)

    @classmethod
    def from_rows(cls, rows: Sequence[LoggedRow]) -> list[LoggedRequest]:
        """Rows as requests in columns: each run of consecutive rows with one request id is one request, its
        features the union of the rows' (None where a row lacks one), its time and latency its first row's."""
        requests: list[LoggedRequest] = []
        start = 0
        while start < len(rows):
            first = rows[start]
            end = start + 1
            while end < len(rows) and rows[end].request_id == first.request_id:
                end += 1
            group = rows[start:end]
            names = list(dict.fromkeys(name for row in group for name in row.features))
            has_probabilities = any(row.probabilities is not None for row in group)
            requests.append(
                cls(
                    request_id=first.request_id,
                    model_name=first.model_name,
                    model_version=first.model_version,
                    features={name: [row.features.get(name) for row in group] for name in names},
                    predictions=[row.prediction for row in group],
                    latency_ms=first.latency_ms,
                    probabilities=[row.probabilities for row in group] if has_probabilities else None,  # type: ignore[misc]
                    ts=first.ts,
                )
            )
            start = end
        return requests


def sqlite_url(path: Path | str) -> str:
    """The SQLAlchemy URL of a SQLite file (absolute, so it does not depend on the working directory)."""
    return f"sqlite:///{Path(path).expanduser().resolve()}"


def safe_url(url: str | URL) -> str:
    """The URL with its password masked, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


def inference_log_table(metadata: MetaData, name: str = "inference_log") -> Table:
    """The inference log table: one row per request, its rows' features and outputs as JSON columns."""
    if not _TABLE_NAME.match(name):
        raise ValueError(f"inference log table name {name!r} must be a plain identifier of at most 40 characters")
    return Table(
        name,
        metadata,
        # BIGINT is not a rowid alias on SQLite, so it would not autoincrement there.
        Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
        Column("ts", DateTime(timezone=True), nullable=False, index=True),
        # No lengths: PostgreSQL would refuse a whole batch for one long value; SQLite ignores them anyway.
        Column("request_id", String, nullable=False, index=True),
        Column("model_name", String, nullable=False),
        # Not indexed: every read is a time range (the ts index), and the versions in one range are few; the
        # index cost the writer ~10% of its time per request.
        Column("model_version", String, nullable=False),
        Column("n_rows", Integer, nullable=False),
        # JSON, not JSONB, on PostgreSQL: cheaper to insert, and it keeps the features as sent (key order).
        # {"feature": [one value per row], "float feature": null, ...} in the request's feature order; a null
        # feature's values are a column of `numbers`.
        Column("features", JSON, nullable=False),
        # The float features as bytes (requests of _BINARY_MIN_ROWS rows or more): float64, little-endian, one
        # feature's n_rows values after another's, in the order of the null features of `features`. As JSON text
        # they cost the request thread ~90 us at 100 rows, a third of what logging cost; the bytes are a copy of
        # the block the model's float feeds are views of. NULL in smaller requests and in rows written before the
        # column existed.
        Column("numbers", LargeBinary, nullable=True),
        Column("predictions", JSON, nullable=False),  # [one prediction per row]
        Column("probabilities", JSON(none_as_null=True), nullable=True),  # [[class probabilities] per row]
        # The class probabilities as bytes when the service gives them as an array (requests of _BINARY_MIN_ROWS
        # rows or more): float64, little-endian, one row's probabilities after another's; `probabilities` is
        # then NULL. The service's are the model's float32 outputs as the response's float64s, so the bytes hold
        # exactly what was answered; as JSON text they cost the request thread ~20 us at 100 rows of two classes.
        Column("probability_numbers", LargeBinary, nullable=True),
        Column("latency_ms", Float, nullable=False),
        # The requests one model call answered together, when the row holds more than one: [[request_id, n_rows,
        # latency_ms], ...] in row order (record_batch); `request_id` and `latency_ms` then hold the first's. NULL
        # for a row of one request and in rows written before the column existed.
        Column("requests", JSON(none_as_null=True), nullable=True),
    )


def _as_utc(ts: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken as UTC (SQLite stores the wall time without its offset)."""
    if ts.tzinfo is UTC:
        return ts
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _epoch_us(ts: datetime) -> int:
    """Microseconds since the epoch of a datetime (naive: UTC)."""
    return (_as_utc(ts) - _EPOCH) // _MICROSECOND


def _from_epoch_us(microseconds: int) -> datetime:
    return _EPOCH + timedelta(microseconds=microseconds)


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays as Python values; anything else as its text rather than failing the batch."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _finite(value: Any) -> Any:
    """NaN and infinities as null: they are not JSON and PostgreSQL refuses them."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


# One encoder for all rows: json.dumps with options builds a new encoder per call, which costs 3x the encoding.
_ENCODER = json.JSONEncoder(allow_nan=False, default=_json_default, separators=(",", ":"))


def _stdlib_dumps(value: Any) -> str:
    """Compact JSON with the standard library; the slower NaN-cleaning path only when a value is not finite."""
    try:
        return _ENCODER.encode(value)
    except ValueError:
        return _ENCODER.encode(_finite(value))


try:
    import orjson

    # NaN and infinities become null (as _finite does), numpy scalars and arrays become numbers.
    _ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY

    def _json_dumps(value: Any) -> str:
        """Compact JSON with orjson (~10x the standard library: the writer thread shares the GIL with
        requests); the standard library for what orjson refuses (integers beyond 64 bits, non-string keys)."""
        try:
            return orjson.dumps(value, default=_json_default, option=_ORJSON_OPTIONS).decode()
        except TypeError:
            return _stdlib_dumps(value)

    def _json_loads(text: Any) -> Any:
        """orjson, with the standard library for what orjson refuses; None and numbers pass through (SQLite
        stores a JSON scalar with the column's NUMERIC affinity)."""
        if not isinstance(text, str):
            return text
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return json.loads(text)

except ImportError:  # pragma: no cover - orjson is a dependency of slipway and of the Bento
    _json_dumps = _stdlib_dumps

    def _json_loads(text: Any) -> Any:
        return json.loads(text) if isinstance(text, str) else text


# The page size of a log file slipway creates (an existing file keeps its own). A 100-row request is ~25 KB,
# which 4 KiB pages store as a chain of overflow pages, each its own WAL frame and write() call; 64 KiB pages
# halved the writer's CPU per 100-row request (most of it kernel time) and changed nothing at one row.
_SQLITE_PAGE_SIZE = 65536

# The writer checkpoints the WAL itself once this much has been committed since its last completed checkpoint.
# With two or more workers writing, SQLite's own (passive) checkpoints never let the WAL restart: there is always
# another writer's frame not yet copied back, so the WAL grew to ~800 MB, every frame a page the kernel had not
# cached before. A RESTART checkpoint after the writer's own commit lets the next write start the WAL over, in
# pages already cached. Measured served, two workers, 100-row requests: 124-158 us of system time a request
# against 68-76 with this and the page-cache advice below (BENCHMARKS.md, stop 24).
_CHECKPOINT_BYTES = 4 << 20


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # Before WAL: it applies only while the file is still empty (WAL fixes the page size for good).
        cursor.execute(f"PRAGMA page_size={_SQLITE_PAGE_SIZE}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def create_log_engine(url: str | URL, *, writer: bool) -> Engine:
    """An engine for the log: WAL and a busy timeout on SQLite, a connect timeout and pre-ping on PostgreSQL."""
    parsed = make_url(url)
    connect_args: dict[str, Any] = {}
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        connect_args["timeout"] = _SQLITE_BUSY_TIMEOUT_S
    elif (
        backend == "postgresql"
        and parsed.get_driver_name() in ("psycopg2", "psycopg")
        and "connect_timeout" not in parsed.query
    ):
        # Without it a firewalled host blocks the writer for minutes per batch (the URL's own value wins).
        connect_args["connect_timeout"] = _PG_CONNECT_TIMEOUT_S
    engine = create_engine(
        parsed,
        connect_args=connect_args,
        json_serializer=_json_dumps,
        # Parameters are users' features: keep them out of error messages and logs.
        hide_parameters=True,
        pool_pre_ping=backend != "sqlite",
    )
    if backend == "sqlite" and writer:
        # Switching to WAL writes to the file, so only the writer does it; readers just benefit.
        event.listen(engine, "connect", _set_sqlite_pragmas)
    return engine


def _sqlite_file(url: URL) -> Path | None:
    """The file of a file-based SQLite URL, else None."""
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def _describe(error: BaseException, password: str | None) -> str:
    """A short, password-free description of a write error."""
    text = str(error.orig) if isinstance(error, DBAPIError) and error.orig is not None else str(error)
    text = " ".join(text.split())[:300]
    if password:
        text = text.replace(password, "***")
    return f"{type(error).__name__}: {text}"


@dataclass(frozen=True)
class _Metrics:
    written: Counter
    dropped: Counter
    queue_rows: Gauge


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()
_METRICS_LOCK = threading.Lock()


def _metrics_for(registry: CollectorRegistry | None) -> _Metrics:
    """The process's inference-log metrics in `registry` (default: the global one), created on first use."""
    import prometheus_client  # here, not at import: BentoML sets PROMETHEUS_MULTIPROC_DIR in the worker

    target = registry if registry is not None else prometheus_client.REGISTRY
    with _METRICS_LOCK:
        metrics = _METRICS.get(target)
        if metrics is None:
            metrics = _Metrics(
                written=prometheus_client.Counter(
                    "slipway_inference_log_rows_written_total",
                    "Rows written to the inference log.",
                    registry=target,
                ),
                dropped=prometheus_client.Counter(
                    "slipway_inference_log_rows_dropped_total",
                    "Rows the inference log dropped, by reason.",
                    ["reason"],
                    registry=target,
                ),
                queue_rows=prometheus_client.Gauge(
                    "slipway_inference_log_queue_rows",
                    "Rows waiting in the inference log queue.",
                    registry=target,
                    multiprocess_mode="livesum",
                ),
            )
            for reason in DROP_REASONS:
                metrics.dropped.labels(reason=reason)
            _METRICS[target] = metrics
        return metrics


# A request (or a model call's requests) as the writer inserts it, in the order of _RAW_COLUMNS: (ts, request_id,
# model_name, model_version, n_rows, features JSON, numbers bytes or None, predictions JSON, probabilities JSON or
# None, probability_numbers bytes or None, latency_ms, requests JSON or None). Encoded on the request thread: a
# tuple of strings, bytes and numbers is not tracked by Python's cyclic garbage collector, while the request's own
# dict of lists, kept alive in the queue until the writer runs, was: every worker then paid for collections
# walking thousands of queued containers (a quarter of one-row throughput, measured). The time is integer
# microseconds since the epoch (UTC): time.time_ns() costs the request thread a tenth of datetime.now(UTC); the
# writer makes the datetime (exactly: integer arithmetic, no float seconds).
_Encoded = tuple[int, str, str, str, int, str, bytes | None, str, str | None, bytes | None, float, str | None]

# One request of a joined table row: (request_id, n_rows, latency_ms), in row order.
RequestPart = tuple[str, int, float]


# What a queued request holds besides its encoded text and bytes: the tuple, its numbers and short strings.
_ENTRY_OVERHEAD_BYTES = 400


def _entry_bytes(entry: _Encoded) -> int:
    """About what a queued request takes in memory: its JSON text and float bytes, plus the tuple around them."""
    return (
        _ENTRY_OVERHEAD_BYTES
        + len(entry[5])
        + len(entry[6] or b"")
        + len(entry[7])
        + len(entry[8] or "")
        + len(entry[9] or b"")
        + len(entry[11] or "")
    )


def _plain_columns(features: Mapping[str, Sequence[Any]]) -> Mapping[str, Any]:
    # A plain dict for the encoder (a feature's values may be a list or a numpy array).
    return features if type(features) is dict else dict(features)


def _float_block(features: Mapping[str, Any]) -> tuple[tuple[str, ...], np.ndarray | None]:
    """The columns whose values are all floats (not ints or bools, which keep their type in JSON), and their
    values as one float64 block of [columns, rows]: what the service passes as `floats` (ModelFeeds.floats)."""
    names: list[str] = []
    for name, values in features.items():
        if isinstance(values, np.ndarray):
            if values.dtype.kind == "f":
                names.append(name)
        elif values and all(type(value) is float for value in values):
            names.append(name)
    if not names:
        return (), None
    return tuple(names), np.array([features[name] for name in names], dtype=np.float64).reshape(len(names), -1)


def _plain_probabilities(probabilities: Sequence[Sequence[float]] | None) -> Any:
    if probabilities is None or hasattr(probabilities, "tolist"):
        return probabilities
    return [list(p) if p is not None and not isinstance(p, list) else p for p in probabilities]


def _block_rows(
    features: Mapping[str, Any], floats: np.ndarray, float_names: Sequence[str], n_rows: int
) -> dict[str, int]:
    """Each float feature's row in `floats` (ModelFeeds.floats), once the block is checked to hold n_rows values
    of distinct features of the request."""
    if floats.shape != (len(float_names), n_rows):
        raise ValueError(f"float features {list(float_names)} of shape {floats.shape} do not hold {n_rows} values each")
    position = {name: j for j, name in enumerate(float_names)}
    if len(position) != len(float_names) or not position.keys() <= features.keys():
        raise ValueError(f"float features {list(float_names)} are not distinct features of the request")
    return position


def _numbers(
    features: Mapping[str, Any], floats: np.ndarray, float_names: Sequence[str], n_rows: int
) -> tuple[dict[str, Any], bytes]:
    """The request's features with its float features null (the JSON layout, which keeps the feature order),
    and those features' values as the bytes of `numbers`: float64, little-endian, one feature's n_rows values
    after another's, in the layout's order. `floats` holds float_names[j]'s values in row j (ModelFeeds.floats):
    in the service's order that is one copy of the block (1 us for 30 features of 100 rows; joining each feed's
    bytes took 10 us, and 90 us as JSON text)."""
    position = _block_rows(features, floats, float_names, n_rows)
    layout = {name: None if name in position else values for name, values in features.items()}
    order = [position[name] for name in layout if name in position]
    if order != list(range(len(order))):
        floats = floats[order]
    return layout, np.ascontiguousarray(floats, dtype="<f8").tobytes()


def _floats_filled(
    features: Mapping[str, Any], floats: np.ndarray, float_names: Sequence[str], n_rows: int
) -> dict[str, Any]:
    """The features with the float features a caller left as None (their values are in `floats`) filled in
    from the block, for the JSON of a request too small for `numbers`. The block's float64 values are the
    Python floats the request held, so the JSON is the same either way."""
    position = _block_rows(features, floats, float_names, n_rows)
    return {
        name: floats[position[name]].tolist() if values is None and name in position else values
        for name, values in features.items()
    }


# Float features go to `numbers` from this many rows on; below it JSON is cheaper on the request thread. The bytes
# cost a fixed ~10 us (the layout and one copy per feed), JSON ~1 us per row of 30 floats: a request of the
# 30-float example took 3 us as JSON and 11 us as bytes at one row, 13 against 12 at 12 rows, 97 against 22 at 100.
_BINARY_MIN_ROWS = 10


def _encode(
    ts_us: int,
    request_id: str,
    model_name: str,
    model_version: str,
    features: Mapping[str, Any],
    floats: np.ndarray | None,
    float_names: Sequence[str],
    predictions: Sequence[Any],
    probabilities: Any,
    latency_ms: float,
    requests: Sequence[RequestPart] | None = None,
) -> _Encoded:
    """The request as the table row the writer inserts: its JSON columns encoded (None probabilities stay
    None: SQL NULL, as the column's none_as_null says); from _BINARY_MIN_ROWS rows on, the float features
    as bytes in `numbers` (_numbers), null in the JSON `features`, and probabilities given as a float array
    as bytes in `probability_numbers`."""
    n_rows = len(predictions)
    number_bytes = None
    probability_text = None
    probability_bytes = None
    if floats is not None and float_names:
        if n_rows >= _BINARY_MIN_ROWS:
            features, number_bytes = _numbers(features, floats, float_names, n_rows)
        elif any(features.get(name) is None for name in float_names):
            features = _floats_filled(features, floats, float_names, n_rows)
    if probabilities is not None:
        if n_rows >= _BINARY_MIN_ROWS and _is_probability_block(probabilities, n_rows):
            probability_bytes = np.ascontiguousarray(probabilities, dtype="<f8").tobytes()
        else:
            probability_text = _json_dumps(probabilities)
    return (
        ts_us,
        request_id,
        model_name,
        model_version,
        n_rows,
        _json_dumps(features),
        number_bytes,
        _json_dumps(predictions),
        probability_text,
        probability_bytes,
        float(latency_ms),
        None if requests is None else _json_dumps(requests),
    )


def _is_probability_block(probabilities: Any, n_rows: int) -> bool:
    """A float array of one row of class probabilities per predicted row."""
    return (
        isinstance(probabilities, np.ndarray)
        and probabilities.dtype.kind == "f"
        and probabilities.ndim == 2
        and probabilities.shape[0] == n_rows
        and probabilities.shape[1] > 0
    )


class _StoredTimes:
    """Epoch microseconds as the DateTime type's bind processor stores them, at a fraction of its cost.

    SQLite's processor formats every field of a datetime ("YYYY-MM-DD HH:MM:SS.ffffff"): ~5 us a request on
    the writer thread, plus ~1.5 us to make the datetime, a third of what the writer spent on a one-row request.
    Here the processor formats each second once and the microseconds are appended to its text; a processor whose
    text of a whole second does not end in ".000000" is called for every value instead."""

    def __init__(self, processor: Callable[[Any], Any] | None) -> None:
        self._processor = processor
        self._second: int | None = None
        self._prefix: str | None = None

    def __call__(self, microseconds: int) -> Any:
        if self._processor is None:
            return _from_epoch_us(microseconds)
        second, fraction = divmod(microseconds, 1_000_000)
        if second != self._second:
            text = self._processor(_from_epoch_us(second * 1_000_000))
            self._prefix = text[: -len(".000000")] if isinstance(text, str) and text.endswith(".000000") else None
            self._second = second
        if self._prefix is None:
            return self._processor(_from_epoch_us(microseconds))
        return f"{self._prefix}.{fraction:06d}"


def _sqlite_params(entries: Sequence[_Encoded], stored_time: Callable[[int], Any]) -> list[Any]:
    """The flat parameter list of _raw_insert_sql for these entries, in order: the time as the DateTime type
    stores it (_StoredTimes)."""
    params: list[Any] = []
    for entry in entries:
        params.append(stored_time(entry[0]))
        params.extend(entry[1:])
    return params


def _insert_params(entries: Sequence[_Encoded]) -> list[dict[str, Any]]:
    """One parameter dict per request for _json_insert (the JSON columns are CAST from the encoded text)."""
    return [dict(zip(_RAW_COLUMNS, (_from_epoch_us(entry[0]), *entry[1:]), strict=True)) for entry in entries]


_RAW_COLUMNS = (
    "ts",
    "request_id",
    "model_name",
    "model_version",
    "n_rows",
    "features",
    "numbers",
    "predictions",
    "probabilities",
    "probability_numbers",
    "latency_ms",
    "requests",
)


def _json_insert(table: Table, dialect: str) -> Any:
    """An INSERT whose JSON columns take encoded text: CAST to JSON in SQL (PostgreSQL, MySQL); SQLite has
    no JSON type and stores the text as it is (CAST there would apply NUMERIC affinity)."""
    values: dict[str, Any] = {name: bindparam(name, type_=table.c[name].type) for name in _RAW_COLUMNS}
    for name in ("features", "predictions", "probabilities", "requests"):
        text = bindparam(name, type_=Text)
        values[name] = text if dialect == "sqlite" else cast(text, table.c[name].type)
    return table.insert().values(values)


# The largest multi-row INSERT on SQLite, in table rows (12 parameters each: 3,072, under the 32,766 variables of
# SQLite 3.32 and newer). A batch is cut into statements of power-of-two sizes up to this (500 = 256 + 128 + 64
# + 32 + 16 + 4), so the connection's statement cache holds at most 9 of them. A statement per batch size would
# not do: a cached statement keeps its last bound values, so the cache held up to 128 batches of JSON (+377 MiB
# over 40 batch sizes of 100-row requests, measured), and preparing each batch's statement afresh doubled the
# writer's CPU per request.
_SQLITE_ROWS_PER_INSERT = 256


def _power_of_two_chunks(count: int) -> list[tuple[int, int]]:
    """(start, size) of consecutive chunks covering `count` items, each a power of two <= _SQLITE_ROWS_PER_INSERT,
    largest first."""
    chunks: list[tuple[int, int]] = []
    start = 0
    while start < count:
        size = min(_SQLITE_ROWS_PER_INSERT, 1 << ((count - start).bit_length() - 1))
        chunks.append((start, size))
        start += size
    return chunks


def _raw_insert_sql(table: Table, engine: Engine, rows: int) -> str:
    """A multi-row INSERT of `rows` requests that _sqlite_params fills, in the DB-API's qmark style (sqlite3).

    One statement per batch, not executemany: sqlite3 releases the GIL around every statement step, so
    executemany hands the GIL back and forth with the worker's request thread once per row (a context switch
    each, and the writer starved behind the event loop: it wrote a third of the rows a multi-row INSERT writes
    in the same time beside a busy thread). One VALUES list binds in C and steps once."""
    quote = engine.dialect.identifier_preparer.quote
    columns = ", ".join(quote(name) for name in _RAW_COLUMNS)
    row = "(" + ", ".join("?" for _ in _RAW_COLUMNS) + ")"
    return f"INSERT INTO {quote(table.name)} ({columns}) VALUES " + ", ".join([row] * rows)


# PostgreSQL with psycopg2: batches go in as COPY ... FROM STDIN (FORMAT binary), not as INSERTs. psycopg2 binds
# parameters into the statement's text, so a 100-row request's 24 KB of `numbers` became ~48 KB of hex in a SQL
# string the server then parsed back: writing 4,000 such requests cost 682 us of machine CPU each (177 us in the
# writer's process) and 263 us (42 us) as binary COPY, measured with the server on the same machine.
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z, PostgreSQL's timestamp zero, in Unix microseconds
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)  # signature, flags, no header extension
_COPY_TRAILER = struct.pack("!h", -1)
_COPY_FIRST = struct.Struct("!hiq")  # the tuple's field count, then ts: length 8, microseconds since 2000
_COPY_LENGTH = struct.Struct("!i")
_COPY_INT4 = struct.Struct("!ii")
_COPY_FLOAT8 = struct.Struct("!id")
_COPY_NULL = _COPY_LENGTH.pack(-1)
# What each column must be for the binary format to fit (its type's binary input), as PostgreSQL's inspector names
# it: the table slipway creates. A table made another way may differ, and then gets INSERTs.
_COPY_TYPES = {
    "ts": ("TIMESTAMP",),  # WITH TIME ZONE: checked apart
    "request_id": ("VARCHAR", "TEXT"),
    "model_name": ("VARCHAR", "TEXT"),
    "model_version": ("VARCHAR", "TEXT"),
    "n_rows": ("INTEGER",),
    "features": ("JSON",),
    "numbers": ("BYTEA",),
    "predictions": ("JSON",),
    "probabilities": ("JSON",),
    "probability_numbers": ("BYTEA",),
    "latency_ms": ("DOUBLE PRECISION",),
    "requests": ("JSON",),
}


def _copy_payload(entries: Sequence[_Encoded]) -> bytes:
    """The entries in PostgreSQL's binary COPY format, columns in _RAW_COLUMNS order: text and JSON as UTF-8
    (json's binary input is its text), bytea as is, n_rows int4, latency float8, ts int64 microseconds since 2000."""
    parts = [_COPY_HEADER]
    add = parts.append
    for entry in entries:
        add(_COPY_FIRST.pack(len(_RAW_COLUMNS), 8, entry[0] - _PG_EPOCH_US))
        _copy_fields(add, entry[1:4])  # request_id, model_name, model_version
        add(_COPY_INT4.pack(4, entry[4]))
        _copy_fields(add, entry[5:10])  # features, numbers, predictions, probabilities, probability_numbers
        add(_COPY_FLOAT8.pack(8, entry[10]))
        _copy_fields(add, entry[11:])  # requests
    add(_COPY_TRAILER)
    return b"".join(parts)


def _copy_fields(add: Callable[[bytes], None], values: Sequence[str | bytes | None]) -> None:
    """Text (as UTF-8), bytes or NULL fields of a binary COPY tuple: each its int32 length, then its bytes."""
    for value in values:
        if value is None:
            add(_COPY_NULL)
            continue
        data = value.encode() if isinstance(value, str) else value
        add(_COPY_LENGTH.pack(len(data)))
        add(data)


def _copy_fits(columns: Sequence[Mapping[str, Any]], added: Collection[str] = ()) -> bool:
    """Whether the table's columns (PostgreSQL's inspector) are the types _copy_payload writes; the `added` ones
    were just added from slipway's own table definition (_add_columns), so they are."""
    types = {column["name"]: column["type"] for column in columns}
    if not all(
        name in added or (name in types and str(types[name]).upper() in accepted)
        for name, accepted in _COPY_TYPES.items()
    ):
        return False
    return getattr(types["ts"], "timezone", False) is True


def _positive_env(environ: Mapping[str, str], name: str, default: float, kind: Callable[[str], Any]) -> Any:
    """A strictly positive finite number from the environment, or the default when unset or empty."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise OptionsError(f"{name}={raw!r} is not a valid number") from None
    if not math.isfinite(value) or value <= 0:
        raise OptionsError(f"{name}={raw!r} must be a number greater than 0")
    return value


class InferenceLog:
    """Queues served predictions and writes them to the inference log table from one background thread."""

    def __init__(
        self,
        url: str,
        table: str = "inference_log",
        batch_rows: int = 500,
        flush_interval_s: float = 0.5,
        max_queue_rows: int = 100_000,
        max_queue_bytes: int = 64 << 20,
        *,
        registry: CollectorRegistry | None = None,
        warn_interval_s: float = 30.0,
    ) -> None:
        if batch_rows < 1 or max_queue_rows < 1 or max_queue_bytes < 1:
            raise ValueError(
                f"batch_rows ({batch_rows}), max_queue_rows ({max_queue_rows}) and max_queue_bytes "
                f"({max_queue_bytes}) must be at least 1"
            )
        if not flush_interval_s > 0:
            raise ValueError(f"flush_interval_s must be greater than 0, got {flush_interval_s}")
        self._url = make_url(url)
        self.safe_url = self._url.render_as_string(hide_password=True)
        self.table = inference_log_table(MetaData(), table)
        self.batch_rows = batch_rows
        self.flush_interval_s = flush_interval_s
        self.max_queue_rows = max_queue_rows
        # The row bound alone let memory grow with the model's width: 100,000 queued rows are ~26 MB with the
        # example's 31 features and ~0.8 GB with 1,000. Queued requests are held as their encoded table rows, so
        # their size is known: a request that would take the queue past either bound is dropped as queue_full.
        self.max_queue_bytes = max_queue_bytes
        # A batch is full at batch_rows table rows or at this many predicted rows, whichever comes first. By
        # table rows alone, joined calls of 100-row requests (~500 predicted rows a table row) never made a full
        # batch before the queue bound (500 x 500 > 100,000): the writer waited for its flush interval while
        # ~55,000 rows a worker queued, then wrote them as one 13 MB transaction, and the queue peaked at the
        # bound and dropped rows (MLP, ~2,300 req/s of 100 rows on 2 workers).
        self.batch_max_rows = max(1, max_queue_rows // 5)
        self.warn_interval_s = warn_interval_s
        # Built now (no connection yet) so a bad URL or a missing driver fails at startup, not per batch.
        self._engine = create_log_engine(self._url, writer=True)
        # SQLite (the default store): rows go to sqlite3's executemany as ready tuples. SQLAlchemy's executemany
        # runs every value of every row through its type processors in Python, on the thread that shares the
        # worker's GIL with the requests: at 100-row requests the writer fell behind and dropped rows. Other
        # databases keep SQLAlchemy's path (its insertmanyvalues batching matters more there).
        dialect = self._engine.dialect
        self._insert = _json_insert(self.table, dialect.name)
        self._sqlite = dialect.name == "sqlite"
        self._raw_inserts: dict[int, str] = {}  # multi-row INSERT text by its row count
        # PostgreSQL through psycopg2: binary COPY when the table's columns fit it (decided with the table).
        self._copy_capable = dialect.name == "postgresql" and dialect.driver == "psycopg2"
        self._copy = False
        quote = dialect.identifier_preparer.quote
        self._copy_sql = (
            f"COPY {quote(self.table.name)} ({', '.join(quote(name) for name in _RAW_COLUMNS)}) "
            "FROM STDIN WITH (FORMAT binary)"
        )
        self._sqlite_path = _sqlite_file(self._url) if self._sqlite else None
        self._uncheckpointed_bytes = 0  # committed since the writer's last completed checkpoint
        self._dropped_upto: int | None = None  # the file's size when its appended pages were last dropped
        self.checkpoints = 0  # completed by the writer (SQLite files only)
        self.checkpoint_errors = 0
        self._stored_time = _StoredTimes(self.table.c.ts.type.dialect_impl(dialect).bind_processor(dialect))
        self._metrics = _metrics_for(registry)
        self.rows_recorded = 0
        self.rows_written = 0
        self.rows_dropped_queue_full = 0
        self.rows_dropped_write_failed = 0
        self.rows_dropped_closed = 0
        self.rows_dropped_invalid = 0
        self.record_errors = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._queue: deque[_Encoded] = deque()
        self._queued_rows = 0
        self._queued_requests = 0
        self._queued_bytes = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._closed = False
        self._close_deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._table_ready = False
        self._failed_batches = 0  # consecutive
        self._resume_at = 0.0
        self._reported: dict[str, int] = {}
        self._last_warning = -math.inf

    @classmethod
    def from_env(cls, environ: Mapping[str, str], registry: CollectorRegistry | None = None) -> InferenceLog | None:
        """The log configured by SLIPWAY_INFERENCE_LOG_* (not started), or None when the URL is unset (disabled)."""
        url = environ.get(URL_ENV, "").strip()
        if not url:
            return None
        batch_rows = _positive_env(environ, BATCH_ROWS_ENV, 500, int)
        flush_s = _positive_env(environ, FLUSH_S_ENV, 0.5, float)
        queue_mb = _positive_env(environ, QUEUE_MB_ENV, 64.0, float)
        try:
            make_url(url)
        except (ArgumentError, ValueError):
            # Not echoed: the value may hold a password.
            raise OptionsError(
                f"{URL_ENV} is not a SQLAlchemy database URL "
                "(e.g. sqlite:////var/lib/slipway/inference_log.db or postgresql+psycopg2://user@host/db)"
            ) from None
        try:
            return cls(
                url,
                batch_rows=batch_rows,
                flush_interval_s=flush_s,
                max_queue_bytes=max(1, int(queue_mb * (1 << 20))),
                registry=registry,
            )
        except (NoSuchModuleError, ModuleNotFoundError) as error:
            raise OptionsError(f"{URL_ENV}={safe_url(url)}: no such database driver ({error})") from None

    def __repr__(self) -> str:
        return f"InferenceLog({self.safe_url!r}, table={self.table.name!r})"

    @property
    def queue_rows(self) -> int:
        """Rows accepted and not yet handed to the database."""
        return self._queued_rows

    @property
    def rows_dropped(self) -> int:
        """Rows dropped for any reason."""
        return (
            self.rows_dropped_queue_full
            + self.rows_dropped_write_failed
            + self.rows_dropped_closed
            + self.rows_dropped_invalid
        )

    def start(self) -> InferenceLog:
        """Start the writer thread (daemon); a no-op when already running."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed; build a new one")
            if self._thread is not None:
                return self
            self._thread = threading.Thread(target=self._run, name="slipway-inference-log", daemon=True)
            self._thread.start()
        # A daemon thread dies with the interpreter; flush what is queued on a normal exit.
        atexit.register(self.close)
        _LOG.info("inference log writing to %s table %s", self.safe_url, self.table.name)
        return self

    def __enter__(self) -> InferenceLog:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def record(self, rows: Sequence[LoggedRow]) -> None:
        """Queue one request's rows for writing; returns at once and never raises."""
        try:
            requests = LoggedRequest.from_rows(rows)
        except Exception:  # the request must not fail because of its log; the writer reports the count
            self.record_errors += 1
            return
        for request in requests:
            self.record_request(request)

    def record_request(self, request: LoggedRequest) -> None:
        """Queue one request given in columns; returns at once and never raises."""
        try:
            try:  # a LoggedRequest may hold any Mapping and Sequence: plain dicts and lists for the encoder
                features = _plain_columns(request.features)
                probabilities = _plain_probabilities(request.probabilities)
                float_names, floats = _float_block(features) if request.n_rows >= _BINARY_MIN_ROWS else ((), None)
            except (TypeError, ValueError) as error:
                self._refused(request.request_id, request.n_rows, error)
                return
            self.record_columns(
                request.request_id,
                request.model_name,
                request.model_version,
                features,
                request.predictions,
                probabilities,
                request.latency_ms,
                floats=floats,
                float_names=float_names,
                ts=request.ts,
            )
        except Exception:  # the request must not fail because of its log; the writer reports the count
            self.record_errors += 1

    def record_columns(
        self,
        request_id: str,
        model_name: str,
        model_version: str,
        features: Mapping[str, Sequence[Any]],
        predictions: Sequence[Any],
        probabilities: Sequence[Sequence[float]] | np.ndarray | None,
        latency_ms: float,
        *,
        floats: np.ndarray | None = None,
        float_names: Sequence[str] = (),
        ts: datetime | None = None,
    ) -> None:
        """Queue one request as the service has it (features a dict of lists, probabilities a float array of
        [rows, classes] or a list of lists), taken at `ts` (default: now), without building a LoggedRequest:
        what the service calls on every request it predicts alone. `floats`: the values of the features named in
        `float_names` as one float64 block of [len(float_names), rows] (ModelFeeds.floats). From
        _BINARY_MIN_ROWS rows on, those features and an array of probabilities are stored as bytes (columns
        `numbers` and `probability_numbers`) rather than as JSON text, which costs the request thread several
        times more. Returns at once and never raises."""
        self.record_batch(
            ((request_id, len(predictions), latency_ms),),
            model_name,
            model_version,
            features,
            predictions,
            probabilities,
            floats=floats,
            float_names=float_names,
            ts=ts,
        )

    def record_batch(
        self,
        requests: Sequence[RequestPart],
        model_name: str,
        model_version: str,
        features: Mapping[str, Sequence[Any] | None],
        predictions: Sequence[Any],
        probabilities: Sequence[Sequence[float]] | np.ndarray | None,
        *,
        floats: np.ndarray | None = None,
        float_names: Sequence[str] = (),
        ts: datetime | None = None,
    ) -> None:
        """Queue the requests one model call answered together as one table row: `requests` their (request_id,
        n_rows, latency_ms) in row order, the other arguments their rows joined, as record_columns takes one
        request's. The row's n_rows counts every request's rows; read_window gives each its own id and latency.
        A feature named in `float_names` may have None for its values: `floats` holds them (the service does not
        join the float lists it has already turned into the block). Returns at once and never raises."""
        try:
            n_rows = len(predictions)
            if n_rows == 0:
                return
            first_id, _, first_latency = requests[0]
            try:
                if sum(part[1] for part in requests) != n_rows:
                    raise ValueError(f"{n_rows} predictions for requests of {[part[1] for part in requests]} rows")
                encoded = _encode(
                    time.time_ns() // 1000 if ts is None else _epoch_us(ts),
                    first_id,
                    model_name,
                    model_version,
                    features,
                    floats,
                    float_names,
                    predictions,
                    probabilities,
                    first_latency,
                    requests if len(requests) > 1 else None,
                )
            except (TypeError, ValueError) as error:  # values no JSON can hold, a latency that is no number
                self._refused(first_id, n_rows, error)
                return
            self._enqueue(encoded, n_rows)
        except Exception:  # the request must not fail because of its log; the writer reports the count
            self.record_errors += 1

    def _refused(self, request_id: str, n_rows: int, error: BaseException) -> None:
        self.last_error = f"request {request_id!r} not loggable: {type(error).__name__}: {error}"
        with self._lock:
            self.rows_recorded += n_rows
            self.rows_dropped_invalid += n_rows
        self._metrics.dropped.labels(reason="invalid").inc(n_rows)

    def _enqueue(self, encoded: _Encoded, n_rows: int) -> None:
        reason = ""
        size = _entry_bytes(encoded)  # before the lock: the writer takes it too
        with self._lock:
            self.rows_recorded += n_rows
            if self._closed:
                self.rows_dropped_closed += n_rows
                reason = "closed"
            elif self._queued_rows + n_rows > self.max_queue_rows or self._queued_bytes + size > self.max_queue_bytes:
                self.rows_dropped_queue_full += n_rows
                reason = "queue_full"
            else:
                self._queue.append(encoded)
                self._queued_rows += n_rows
                self._queued_requests += 1
                self._queued_bytes += size
                full_batch = self._full_batch_waiting()
        if reason:
            # Logged by the writer thread (or close()): request threads never log.
            self._metrics.dropped.labels(reason=reason).inc(n_rows)
            return
        self._metrics.queue_rows.inc(n_rows)
        if full_batch:
            self._wake.set()

    def close(self, timeout_s: float = 10.0) -> None:
        """Write everything queued, then stop the writer; rows still queued after `timeout_s` are dropped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        atexit.unregister(self.close)
        self._close_deadline = time.monotonic() + timeout_s
        self._stopping.set()
        self._wake.set()
        if thread is None:
            self._run()  # never started: flush in the caller's thread
        else:
            thread.join(timeout_s)
            if thread.is_alive():
                abandoned = self._abandon_queue()
                _LOG.warning(
                    "inference log %s: writer still busy after %.1f s; dropped %d queued rows",
                    self.safe_url,
                    timeout_s,
                    abandoned,
                )
        self._report(force=True)
        _LOG.info(
            "inference log %s closed: %d rows recorded, %d written, %d dropped",
            self.safe_url,
            self.rows_recorded,
            self.rows_written,
            self.rows_dropped,
        )

    def _abandon_queue(self) -> int:
        """Drop whatever is still queued (close timed out), counted as `closed`."""
        with self._lock:
            n_rows = sum(entry[4] for entry in self._queue)
            self._queue.clear()
            self._queued_rows -= n_rows
            self._queued_requests = 0
            self._queued_bytes = 0
        self._metrics.queue_rows.dec(n_rows)
        self._dropped(n_rows, "closed")
        return n_rows

    def _run(self) -> None:
        """The writer: woken by a full batch, write the full batches queued; after a flush interval without one,
        write all queued rows; after close(), drain and stop.

        Full batches only when woken: a partial batch left behind waits for the next full one (it is at the head of
        the queue, so it leaves first) or for the flush interval. Writing whatever was queued every time round
        let the writer chase a fast producer: each write took long enough for a few more requests to arrive, so
        it wrote batch after batch of a few rows, a transaction and a GIL hand-off each (one request thread
        queueing 32,000 one-row requests at ~10,000 a second: 8,515 writes of under 50 requests, 94 us of writer
        CPU and ~35 us more on the request thread per request, against 64 full writes, 9-12 us and ~3 us)."""
        try:
            while True:
                pause = self._resume_at - time.monotonic()
                if pause > 0:
                    self._stopping.wait(pause)  # backing off a failing store; close() cuts it short
                woken = self._wake.wait(self.flush_interval_s)
                self._wake.clear()
                stopping = self._stopping.is_set()
                try:
                    self._drain(full_only=woken and not stopping)
                    self._report(force=False)
                except Exception:  # a bug here must not kill the writer and silently stop all logging
                    _LOG.exception("inference log %s: writer error", self.safe_url)
                if stopping:
                    return
        finally:
            self._engine.dispose()

    def _drain(self, full_only: bool = False) -> None:
        """Write batches until the queue is empty (`full_only`: until less than a full batch is left), or until
        a batch fails: then back off, leaving the rest queued for when the store is back (the queue bound turns a
        long outage into queue_full drops). While closing: try every batch once, and once close()'s deadline has
        passed drop them instead."""
        while True:
            if full_only and not self._full_batch_waiting():
                return
            entries, n_rows, n_bytes = self._take()
            if not entries:
                return
            deadline = self._close_deadline
            if deadline is not None and time.monotonic() > deadline:
                self._dropped(n_rows, "closed")
                continue
            written = self._write(entries, n_rows, n_bytes)
            self._report(force=False)  # a busy queue never empties: report during the drain too
            if not written and self._failed_batches and deadline is None:
                pause = _BACKOFF_S[min(self._failed_batches, len(_BACKOFF_S)) - 1]
                self._resume_at = time.monotonic() + pause
                return

    def _full_batch_waiting(self) -> bool:
        """A full batch is queued: batch_rows table rows, or batch_max_rows predicted rows."""
        return self._queued_requests >= self.batch_rows or self._queued_rows >= self.batch_max_rows

    def _take(self) -> tuple[list[_Encoded], int, int]:
        """From the queue head, up to batch_rows requests (table rows) and no more than one past batch_max_rows
        predicted rows; and the predicted rows they hold, and their size (_entry_bytes)."""
        entries: list[_Encoded] = []
        n_rows = size = 0
        with self._lock:
            queue = self._queue
            while queue and len(entries) < self.batch_rows and n_rows < self.batch_max_rows:
                entry = queue.popleft()
                entries.append(entry)
                n_rows += entry[4]
                size += _entry_bytes(entry)
            self._queued_rows -= n_rows
            self._queued_requests -= len(entries)
            self._queued_bytes -= size
        if n_rows:
            self._metrics.queue_rows.dec(n_rows)
        return entries, n_rows, size

    def _retry_delays(self) -> tuple[float, ...]:
        """Retry delays for the next batch: none while the store is known to be failing (one attempt per batch)."""
        if self._failed_batches:
            return ()
        deadline = self._close_deadline
        if deadline is not None and time.monotonic() + sum(_RETRY_DELAYS_S) >= deadline:
            return ()  # closing, and no time left to wait
        return _RETRY_DELAYS_S

    def _write(self, entries: list[_Encoded], n_rows: int, n_bytes: int) -> bool:
        """Insert one batch in one transaction, retrying transient errors; count it written or dropped. `n_bytes`:
        the entries' size as _take measured it, which counts towards the writer's next checkpoint."""
        params: list[Any] | None = None
        for delay in (*self._retry_delays(), None):
            try:
                self._ensure_table()
                with self._engine.begin() as connection:
                    if self._sqlite:
                        for start, size in _power_of_two_chunks(len(entries)):
                            chunk = entries[start : start + size]
                            connection.exec_driver_sql(
                                self._sqlite_insert(size), tuple(_sqlite_params(chunk, self._stored_time))
                            )
                    elif self._copy:
                        self._copy_batch(connection, entries)
                    else:
                        if params is None:
                            params = _insert_params(entries)
                        connection.execute(self._insert, params)
            except Exception as error:
                self._table_ready = False
                transient = _is_transient(error)
                if delay is not None and transient:
                    time.sleep(delay)
                    continue
                # Only the store failing counts towards the back-off; a batch the database refuses does not.
                self._failed_batches = self._failed_batches + 1 if transient else 0
                self.last_error = _describe(error, self._url.password)
                self._dropped(n_rows, "write_failed")
                return False
            self._failed_batches = 0
            with self._lock:
                self.rows_written += n_rows
            self._metrics.written.inc(n_rows)
            if self._sqlite_path is not None:
                self._uncheckpointed_bytes += n_bytes
                if self._uncheckpointed_bytes >= _CHECKPOINT_BYTES:
                    self._checkpoint()
            return True
        return False  # unreachable: the last attempt either returns True or drops the batch

    def _checkpoint(self) -> None:
        """Copy the WAL back into the database and let the next write restart it (SQLite files): without
        waiting for anyone. With the busy timeout at 0 for this call, a checkpoint that would have to wait for the
        other workers' writers or for a reader (a monitor run) does what it can without blocking and the WAL
        restarts at a later one; waiting would stall this worker's log behind a long read.

        A completed checkpoint has synced the database file, and the writer then tells the kernel it will not
        read the pages appended since the last one again (POSIX_FADV_DONTNEED, _drop_appended_pages): the rows'
        pages are written once and read rarely, so the page cache need not keep gigabytes of them, and the pages
        it frees are the ones the next checkpoint writes into. On the VMs measured, page-cache pages never used
        before cost ~2.5 us of system time per KB (the hypervisor backs guest memory on first touch), re-used ones
        ~0.1 us. Only clean pages are dropped: nothing written is lost, and a reader reads them from disk.

        A failed checkpoint loses nothing (the rows are committed in the WAL); it is counted and logged, and
        SQLite's own passive checkpoints still run."""
        try:
            with self._engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA busy_timeout = 0").fetchall()
                try:
                    busy, frames, copied = connection.exec_driver_sql("PRAGMA wal_checkpoint(RESTART)").one()
                finally:
                    try:
                        restore = f"PRAGMA busy_timeout = {int(_SQLITE_BUSY_TIMEOUT_S * 1000)}"
                        connection.exec_driver_sql(restore).fetchall()
                    except DBAPIError:
                        # Never back to the pool without its busy timeout: the next INSERT would fail at once
                        # whenever another worker held the lock.
                        connection.invalidate()
                        raise
        except (DBAPIError, ValueError) as error:
            self.checkpoint_errors += 1
            if self.checkpoint_errors == 1:
                _LOG.warning(
                    "inference log %s: WAL checkpoint failed (rows are safe in the WAL; SQLite's own checkpoints "
                    "go on): %s",
                    self.safe_url,
                    _describe(error, None),
                )
            return
        if busy or frames != copied:
            return  # another writer or a reader was in the way: the next batch tries again
        self._uncheckpointed_bytes = 0
        self.checkpoints += 1
        self._drop_appended_pages()

    def _drop_appended_pages(self) -> None:
        """Advise the kernel to drop the database file's pages appended since the last call (its size then; at
        first, its size when this writer began). Those are mostly the rows' pages, written once; the pages
        modified in place, the indexes' leaves and the B-trees' inner pages that inserts read, stay cached.
        Dropping the whole file would drop those too, and inserting random request ids into their index would
        read leaves back from disk. Measured served (stop 24): the same req/s either way at 100 rows (4,281
        against 4,302; 3,972 without dropping), no difference outside the noise at one row."""
        if self._sqlite_path is None or not hasattr(os, "posix_fadvise"):
            return
        with suppress(OSError):
            descriptor = os.open(self._sqlite_path, os.O_RDONLY)
            try:
                size = os.fstat(descriptor).st_size
                start = size if self._dropped_upto is None else self._dropped_upto
                if size > start:
                    os.posix_fadvise(descriptor, start, size - start, os.POSIX_FADV_DONTNEED)
                self._dropped_upto = size
            finally:
                os.close(descriptor)

    def _copy_batch(self, connection: Any, entries: Sequence[_Encoded]) -> None:
        """COPY the entries in binary (PostgreSQL through psycopg2) in the connection's transaction; the driver's
        errors become SQLAlchemy's, so the retry and drop accounting treat them as they treat an INSERT's."""
        dbapi = connection.dialect.dbapi
        raw = connection.connection.dbapi_connection
        cursor = raw.cursor()
        try:
            cursor.copy_expert(self._copy_sql, io.BytesIO(_copy_payload(entries)))
        except dbapi.Error as error:
            raise DBAPIError.instance(
                self._copy_sql,
                None,
                error,
                dbapi.Error,
                hide_parameters=True,
                connection_invalidated=bool(raw.closed),
                dialect=connection.dialect,
            ) from None
        finally:
            if not raw.closed:
                cursor.close()

    def _sqlite_insert(self, rows: int) -> str:
        text = self._raw_inserts.get(rows)
        if text is None:  # at most 9 sizes: _power_of_two_chunks
            text = self._raw_inserts[rows] = _raw_insert_sql(self.table, self._engine, rows)
        return text

    def _ensure_table(self) -> None:
        """Create the table once per engine; another worker creating it at the same moment is fine."""
        if self._table_ready:
            return
        database = self._sqlite_path
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
            if self._dropped_upto is None:
                with suppress(OSError):
                    self._dropped_upto = database.stat().st_size  # pages from before this writer stay cached
        try:
            with self._engine.begin() as connection:
                self.table.create(connection, checkfirst=True)
        except DBAPIError:
            with self._engine.connect() as connection:
                if not inspect(connection).has_table(self.table.name):
                    raise
        with self._engine.connect() as connection:
            # An older log's layout raises here: every batch then fails saying so.
            columns = _log_columns(connection, self.table.name, self.safe_url) or []
        added = sorted(set(_ADDED_COLUMNS) - {column["name"] for column in columns})
        self._add_columns(added)
        if self._copy_capable:
            self._copy = _copy_fits(columns, added)
            if not self._copy:
                _LOG.info("inference log %s: table %s has other column types: INSERTs", self.safe_url, self.table.name)
        self._table_ready = True

    def _add_columns(self, names: list[str]) -> None:
        """Add the nullable columns a log table of an earlier slipway lacks (its rows read back as before)."""
        for name in names:
            column = self.table.c[name]
            kind = column.type.compile(dialect=self._engine.dialect)
            quote = self._engine.dialect.identifier_preparer.quote
            try:
                with self._engine.begin() as connection:
                    connection.exec_driver_sql(f"ALTER TABLE {quote(self.table.name)} ADD COLUMN {quote(name)} {kind}")
            except DBAPIError:
                with self._engine.connect() as connection:  # another worker added it first
                    present = {column["name"] for column in inspect(connection).get_columns(self.table.name)}
                if name not in present:
                    raise
            _LOG.info("inference log %s: added column %s to table %s", self.safe_url, name, self.table.name)

    def _dropped(self, n_rows: int, reason: str) -> None:
        """Count rows the writer dropped after taking them off the queue."""
        if not n_rows:
            return
        with self._lock:
            if reason == "write_failed":
                self.rows_dropped_write_failed += n_rows
            else:
                self.rows_dropped_closed += n_rows
        self._metrics.dropped.labels(reason=reason).inc(n_rows)

    def _drop_totals(self) -> dict[str, int]:
        return {
            "queue_full": self.rows_dropped_queue_full,
            "write_failed": self.rows_dropped_write_failed,
            "closed": self.rows_dropped_closed,
            "invalid": self.rows_dropped_invalid,
            "record_errors": self.record_errors,
        }

    def _report(self, *, force: bool) -> None:
        """Warn about drops since the last warning, at most once per warn_interval_s unless forced."""
        now = time.monotonic()
        with self._lock:
            totals = self._drop_totals()
            pending = {key: totals[key] - self._reported.get(key, 0) for key in totals}
            pending = {key: n for key, n in pending.items() if n}
            if not pending or (not force and now - self._last_warning < self.warn_interval_s):
                return
            self._reported = totals
            self._last_warning = now
        _LOG.warning(
            "inference log %s table %s: dropped %d rows since the last report (%s); last write error: %s; "
            "totals: %d rows written, %d dropped",
            self.safe_url,
            self.table.name,
            sum(n for key, n in pending.items() if key != "record_errors"),
            ", ".join(f"{key}={n}" for key, n in pending.items()),
            self.last_error or "none",
            self.rows_written,
            self.rows_dropped,
        )


def _is_transient(error: BaseException) -> bool:
    """Errors of the store rather than of the rows: locked SQLite, lost or refused connections, file system."""
    if isinstance(error, OperationalError | InterfaceError | OSError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def _window_query(
    table: Table,
    present: set[str],
    since: datetime | None,
    until: datetime | None,
    model_version: str | None,
    probabilities: bool = False,
    request_id: str | None = None,
) -> Any:
    # The JSON columns come back as text and read_window decodes them with orjson: SQLAlchemy's JSON type
    # runs json.loads on every value, the larger part of reading a million rows. CAST is the same SQL on
    # SQLite and PostgreSQL. A column a table was not yet given (_ADDED_COLUMNS) reads as NULL; a JSON one as text.
    def added(name: str) -> Any:
        if name not in present:
            return null().label(name)
        column = table.c[name]
        return (cast(column, Text) if isinstance(column.type, JSON) else column).label(name)

    columns = [
        cast(table.c.features, Text).label("features"),
        added("numbers"),
        cast(table.c.predictions, Text).label("predictions"),
        table.c.n_rows,
        table.c.ts,
        table.c.model_version,
        table.c.request_id,
        table.c.latency_ms,
        added("requests"),
    ]
    if probabilities:
        columns += [cast(table.c.probabilities, Text).label("probabilities"), added("probability_numbers")]
    query = select(*columns)
    if since is not None:
        query = query.where(table.c.ts >= _as_utc(since))
    if until is not None:
        query = query.where(table.c.ts < _as_utc(until))
    if model_version is not None:
        query = query.where(table.c.model_version == model_version)
    if request_id is not None:  # its own table row, or one of the requests of a joined row (`requests`)
        found = table.c.request_id == request_id
        if "requests" in present:
            escaped = request_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            found = found | cast(table.c.requests, Text).like(f'%"{escaped}"%', escape="\\")
        query = query.where(found)
    return query.order_by(table.c.ts, table.c.id)


def absent_sqlite_file(url: str | URL) -> Path | None:
    """The SQLite file of `url` when it does not exist (a reader connecting would create it empty), else None.
    Also what keeps `slipway status` from creating an MLflow registry by reading it."""
    database = _sqlite_file(make_url(url))
    return database if database is not None and not database.exists() else None


def _log_columns(connection: Any, table: str, where: str) -> list[Any] | None:
    """The log table's columns as the inspector describes them, None when there is no such table; an
    InferenceLogError when it holds an older slipway's layout (_check_layout)."""
    inspector = inspect(connection)
    if not inspector.has_table(table):
        return None
    columns = inspector.get_columns(table)
    _check_layout({column["name"] for column in columns}, table, where)
    return columns


def _fetch(url: str, query_for: Callable[[Table, set[str]], Any], table: str) -> list[Any]:
    """The rows of the query over the log table; a missing database or table is an InferenceLogError."""
    parsed = make_url(url)
    database = absent_sqlite_file(parsed)
    if database is not None:  # connecting would create an empty file and hide the misconfiguration
        raise InferenceLogError(f"no inference log database at {database}")
    engine = create_log_engine(parsed, writer=False)
    try:
        with engine.connect() as connection:
            columns = _log_columns(connection, table, safe_url(parsed))
            if columns is None:
                raise InferenceLogError(f"no table {table!r} in {safe_url(parsed)}: nothing was logged there yet")
            present = {column["name"] for column in columns}
            return list(connection.execute(query_for(inference_log_table(MetaData(), table), present)))
    except DBAPIError as error:
        raise InferenceLogUnreachable(
            f"cannot read the inference log at {safe_url(parsed)}: {_describe(error, parsed.password)}"
        ) from None
    finally:
        engine.dispose()


# Columns added to the table after its first release: a table without them gets them on the writer's first
# batch (ALTER TABLE ... ADD COLUMN, nullable), and read_window reads such a table as it is.
_ADDED_COLUMNS = ("numbers", "probability_numbers", "requests")


def _check_layout(columns: set[str], table: str, where: str) -> None:
    """InferenceLogError when the table is not one request per row (a log written by an older slipway)."""
    missing = sorted({"n_rows", "features", "predictions"} - columns)
    if missing:
        raise InferenceLogError(
            f"table {table!r} in {where} has no column {missing}: it holds an older slipway's inference log (one "
            "row per prediction). Rename that table (or move its database file) aside; slipway then starts a new one."
        )


def read_window(
    url: str,
    since: datetime,
    until: datetime | None = None,
    model_version: str | None = None,
    table: str = "inference_log",
    *,
    probabilities: bool = False,
) -> pd.DataFrame:
    """Logged rows with since <= ts < until, one per prediction: one column per feature (NaN where a request
    lacked it), then prediction, ts (UTC), model_version, request_id, latency_ms, and with `probabilities` a
    column of that name (the row's class probabilities as a list; None where the model gave none); ordered by
    time. Naive datetimes are taken as UTC."""

    def query(t: Table, present: set[str]) -> Any:
        return _window_query(t, present, since, until, model_version, probabilities)

    with _gc_paused():
        return _frame_of(_fetch(url, query, table), table, probabilities)


def find_request(
    url: str,
    request_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
    table: str = "inference_log",
) -> pd.DataFrame:
    """The logged rows of one request, as read_window gives them (with `probabilities`): those of its own table
    row, or its share of a row it was logged in with the other requests of one model call. Searches the rows
    logged from `since` to `until` (each None: no bound); empty when none is the request's. The index on
    request_id finds a request that has its own row, or came first in a joined one; the rest of a joined row's
    requests are found by reading the `requests` column of every row in the range, so give the range where you
    know it (serving.predictor.request_id_time reads it off a request id slipway made)."""

    def query(t: Table, present: set[str]) -> Any:
        return _window_query(t, present, since, until, None, probabilities=True, request_id=request_id)

    frame = _frame_of(_fetch(url, query, table), table, probabilities=True)
    return frame[frame["request_id"] == request_id].reset_index(drop=True)


def _frame_of(requests: Sequence[Any], table: str, probabilities: bool) -> pd.DataFrame:
    """The table rows of `requests` (rows of _window_query) as read_window's frame, a row per prediction."""
    import pandas as pd  # here, not at import: the service does not need pandas to write

    columns: dict[str, list[Any]] = {}
    predictions: list[Any] = []
    ts: list[Any] = []
    versions: list[Any] = []
    request_ids: list[Any] = []
    latencies: list[Any] = []
    probability_rows: list[Any] = []
    total = 0
    for request in requests:
        n = request.n_rows
        features = _json_loads(request.features) or {}
        floats = _float64_values(request.numbers) if request.numbers is not None else None
        i = 0
        for name, values in features.items():
            if values is None:  # the next n values of `numbers`
                if floats is None or len(floats) < i + n:
                    raise _floats_misfit(request.request_id, floats, n)
                values = floats[i : i + n]
                i += n
            elif len(values) != n:
                raise InferenceLogError(
                    f"request {request.request_id!r}: feature {name!r} has {len(values)} values for {n} rows"
                )
            column = columns.get(name)
            if column is None:
                column = columns[name] = [None] * total
            column.extend(values)
        if floats is not None and len(floats) != i:
            raise _floats_misfit(request.request_id, floats, n)
        total += n
        if len(features) != len(columns):  # features this request did not have: None for its rows
            for column in columns.values():
                column.extend([None] * (total - len(column)))
        predictions.extend(_json_loads(request.predictions))
        if probabilities:
            probability_rows.extend(_probability_rows(request))
        if n == 1:
            ts.append(request.ts)
            versions.append(request.model_version)
            request_ids.append(request.request_id)
            latencies.append(request.latency_ms)
            continue
        ts.extend([request.ts] * n)
        versions.extend([request.model_version] * n)
        if request.requests is None:
            request_ids.extend([request.request_id] * n)
            latencies.extend([request.latency_ms] * n)
            continue
        parts = _json_loads(request.requests)
        if sum(part[1] for part in parts) != n:
            raise InferenceLogError(
                f"the row of request {request.request_id!r} holds {n} rows for requests of "
                f"{[part[1] for part in parts]} rows"
            )
        for part_id, part_rows, part_latency in parts:
            request_ids.extend([part_id] * part_rows)
            latencies.extend([part_latency] * part_rows)
    if len(predictions) != total:
        raise InferenceLogError(f"the log holds {len(predictions)} predictions for {total} rows in {table!r}")
    meta = [*META_COLUMNS, "probabilities"] if probabilities else list(META_COLUMNS)
    clashes = sorted(set(columns) & set(meta))
    if clashes:
        raise InferenceLogError(f"features {clashes} have the names of inference log columns {meta}")
    frame = pd.DataFrame(columns, index=pd.RangeIndex(total))
    frame["prediction"] = pd.Series(predictions, dtype=object)
    frame["ts"] = pd.to_datetime(ts, utc=True)
    frame["model_version"] = pd.Series(versions, dtype=object)
    frame["request_id"] = pd.Series(request_ids, dtype=object)
    frame["latency_ms"] = pd.Series(latencies, dtype="float64")
    if probabilities:
        frame["probabilities"] = pd.Series(probability_rows, dtype=object)
    return frame


def _probability_rows(request: Any) -> list[Any]:
    """The request's class probabilities, a list per row (None per row when it has none), from either form."""
    n = request.n_rows
    if request.probability_numbers is not None:
        values = _float64_values(request.probability_numbers)
        classes, rest = divmod(len(values), n)
        if rest or not classes:
            raise InferenceLogError(
                f"request {request.request_id!r}: {len(values)} probabilities for {n} rows "
                "(column `probability_numbers`): the stored row is inconsistent"
            )
        return [values[i * classes : (i + 1) * classes].tolist() for i in range(n)]
    rows = _json_loads(request.probabilities)
    if rows is None:
        return [None] * n
    if len(rows) != n:
        raise InferenceLogError(f"request {request.request_id!r}: {len(rows)} probability rows for {n} rows")
    return list(rows)


def _floats_misfit(request_id: str, floats: array[float] | None, n_rows: int) -> InferenceLogError:
    return InferenceLogError(
        f"request {request_id!r}: {0 if floats is None else len(floats)} float values for {n_rows} rows of "
        "its float features (column `numbers`): the stored row is inconsistent"
    )


def _float64_values(data: bytes | memoryview) -> array[float]:
    """The floats of a `numbers` value (float64, little-endian)."""
    values = array("d")
    values.frombytes(data)
    if sys.byteorder == "big":
        values.byteswap()
    return values


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a window is read: it would walk the million row tuples
    and feature dicts the read creates (none of them cyclic) again and again, which doubles a 1M-row read."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --- retention ------------------------------------------------------------------------------------------------

# Requests deleted per transaction by prune_log. Each chunk is one short write transaction, so serving's writers
# (which take turns on SQLite's write lock, with a 5 s busy timeout) wait milliseconds for it, never seconds: a
# single DELETE of a month's rows would hold the lock for as long as it takes to free gigabytes of pages.
PRUNE_CHUNK_REQUESTS = 1000
_PRUNE_PAUSE_MAX_S = 0.25  # the longest idle between two chunks


@dataclass(frozen=True)
class PruneResult:
    """What prune_log deleted: the table rows (a request each, or the requests of one model call) logged before
    `before` and the predictions they held."""

    where: str  # the store (password hidden) and table
    before: datetime
    requests: int
    rows: int
    seconds: float
    dry_run: bool = False
    found: bool = True  # False: no log database or table there yet, so nothing to delete

    def line(self) -> str:
        """One line for a log or a terminal."""
        if not self.found:
            return f"nothing to prune: no inference log at {self.where} yet"
        verb = "would delete" if self.dry_run else "deleted"
        return (
            f"{verb} {self.requests:,} log rows ({self.rows:,} predictions) logged before "
            f"{_as_utc(self.before):%Y-%m-%d %H:%M:%S} UTC from {self.where}"
            + ("" if self.dry_run else f" in {self.seconds:.1f} s")
        )


def prune_log(
    url: str,
    before: datetime,
    table: str = "inference_log",
    *,
    chunk_requests: int = PRUNE_CHUNK_REQUESTS,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> PruneResult:
    """Delete the requests logged before `before` (naive: UTC), oldest first, in transactions of at most
    `chunk_requests` requests with a pause as long as each chunk after it, so that serving keeps writing
    meanwhile. `progress(requests, total)` is called
    after each chunk. With `dry_run` only count them. A missing database or table deletes nothing (found=False).

    Freed pages are reused by later inserts, so a SQLite file stops growing once retention deletes as much as
    serving writes; it does not shrink (VACUUM it while nothing serves to give the space back)."""
    if chunk_requests < 1:
        raise ValueError(f"chunk_requests must be at least 1, not {chunk_requests}")
    started = time.monotonic()
    parsed = make_url(url)
    where = f"{safe_url(parsed)} table {table}"
    cutoff = _as_utc(before)
    if absent_sqlite_file(parsed) is not None:  # connecting would create the file
        return PruneResult(where, cutoff, 0, 0, 0.0, dry_run, found=False)
    t = inference_log_table(MetaData(), table)
    engine = create_log_engine(parsed, writer=False)
    try:
        with engine.connect() as connection:
            if _log_columns(connection, table, safe_url(parsed)) is None:
                return PruneResult(where, cutoff, 0, 0, 0.0, dry_run, found=False)
            total, total_rows = connection.execute(
                select(func.count(), func.coalesce(func.sum(t.c.n_rows), 0)).where(t.c.ts < cutoff)
            ).one()
            connection.rollback()  # end the read: on SQLite it would hold back serving's WAL checkpoints
        if dry_run:
            return PruneResult(where, cutoff, int(total), int(total_rows), time.monotonic() - started, True)
        requests = rows = 0
        oldest = select(t.c.id, t.c.n_rows).where(t.c.ts < cutoff).order_by(t.c.ts).limit(chunk_requests)
        while True:
            chunk_started = time.monotonic()
            with engine.begin() as connection:
                chunk = connection.execute(oldest).all()
                if chunk:
                    connection.execute(delete(t).where(t.c.id.in_([row.id for row in chunk])))
            if not chunk:
                break
            held = time.monotonic() - chunk_started
            requests += len(chunk)
            rows += sum(row.n_rows for row in chunk)
            if progress is not None:
                progress(requests, max(requests, int(total)))
            if len(chunk) < chunk_requests:
                break
            # SQLite's lock is not fair: a writer waiting in its busy handler sleeps up to 100 ms between tries,
            # and chunks started back to back took the lock each time it looked (a writer logging flat out wrote
            # between 3 of 39 chunks, then nothing). Idle as long as the chunk held the lock, so a waiting writer
            # finds it free half the time.
            time.sleep(min(held, _PRUNE_PAUSE_MAX_S))
    except DBAPIError as error:
        raise InferenceLogUnreachable(f"pruning {where}: {_describe(error, parsed.password)}") from None
    finally:
        engine.dispose()
    result = PruneResult(where, cutoff, requests, rows, time.monotonic() - started)
    _LOG.info("inference log: %s", result.line())
    return result
