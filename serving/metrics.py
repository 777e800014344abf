"""slipway's own Prometheus metrics, served on BentoML's /metrics beside its request-duration histograms.

BentoML workers run prometheus_client in multiprocess mode: each worker sets PROMETHEUS_MULTIPROC_DIR (a folder
under BENTOML_HOME) before it builds the service, and /metrics merges every worker's files. So the metrics are
created on first use inside the worker, never at import (the service module is imported by the arbiter too,
before that variable is set), and once per process (two objects of one name would overwrite each other's file).
The inference log's metrics (slipway_inference_log_*) are created the same way by serving.inference_log.

BentoML's own request metrics (bentoml_service_request_duration_seconds, _request_total, _request_in_progress,
_last_request_timestamp_seconds, labelled by endpoint, status and service) are recorded by
RequestMetricsMiddleware: BentoML's middleware with the label lookups done once per endpoint instead of five
times per request. serving.guard puts it in place of BentoML's.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from timeit import default_timer
from typing import TYPE_CHECKING, Any

from bentoml._internal.context import server_context
from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

ERROR_KINDS = ("validation", "auth", "body_too_large", "internal")

_LOCK = threading.Lock()
_METRICS: ServiceMetrics | None = None


@dataclass(frozen=True)
class ServiceMetrics:
    """Rows predicted, requests refused or failed by kind, and which model this worker serves."""

    prediction_rows: Counter
    errors: Counter
    model_info: Gauge
    batch_requests: Histogram

    def error(self, kind: str) -> None:
        """Count one refused or failed request of `kind` (one of ERROR_KINDS)."""
        self.errors.labels(kind=kind).inc()


def service_metrics() -> ServiceMetrics:
    """This process's metrics, created on first call (in the worker, after BentoML set PROMETHEUS_MULTIPROC_DIR)."""
    global _METRICS
    import prometheus_client

    with _LOCK:
        if _METRICS is None:
            errors = prometheus_client.Counter("slipway_errors_total", "Requests refused or failed, by kind.", ["kind"])
            for kind in ERROR_KINDS:
                errors.labels(kind=kind)
            _METRICS = ServiceMetrics(
                prediction_rows=prometheus_client.Counter(
                    "slipway_prediction_rows_total", "Rows predicted (one per row of each served request)."
                ),
                errors=errors,
                # "max" across workers: every worker serves the same model, and the value is always 1.
                model_info=prometheus_client.Gauge(
                    "slipway_model_info",
                    "The model being served (value 1; the labels say which).",
                    ["model_name", "model_version"],
                    multiprocess_mode="max",
                ),
                batch_requests=prometheus_client.Histogram(
                    "slipway_predict_batch_requests",
                    "Requests answered by one model call (adaptive batching of the fast /predict).",
                    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
                ),
            )
        return _METRICS


_Message = MutableMapping[str, Any]
_Send = Callable[[_Message], Awaitable[None]]
_MAX_CACHED_ENDPOINTS = 64  # paths are client-chosen (404 probes); past this many, look the series up each time


@dataclass
class _EndpointSeries:
    """The labelled series one endpoint writes to, looked up once."""

    in_progress: Any
    last_request: Any | None  # None on BentoML's skip paths (health probes)
    by_status: dict[int, tuple[Any, Any]] = field(default_factory=dict)  # status -> (request_total, duration)


class RequestMetricsMiddleware(RunnerTrafficMetricsMiddleware):
    """BentoML's request metrics middleware with its label lookups cached per endpoint and status.

    The metrics themselves are BentoML's: `_setup` (inherited) creates them with BentoML's names, help, label
    names, buckets and namespace, and the series and values written per HTTP request are the ones BentoML's
    `__call__` writes. Only how a request finds its series changes: five `labels(...)` lookups per request (each
    formats and hashes five label values under a lock) cost as much as the model on a one-row request.
    WebSocket traffic and /metrics go through BentoML's own code unchanged.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], /, **options: Any) -> None:
        super().__init__(app, **options)
        self._series: dict[str, _EndpointSeries] = {}

    async def __call__(self, scope: _Message, receive: Callable[[], Awaitable[_Message]], send: _Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/metrics":
            await super().__call__(scope, receive, send)
            return
        if not self._is_setup:
            self._setup()
        endpoint: str = scope["path"]
        series = self._series.get(endpoint) or self._endpoint_series(endpoint)
        if series.last_request is not None:
            series.last_request.set_to_current_time()
        started = default_timer()
        status = 0

        async def timed_send(message: _Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "http.response.body" and not message.get("more_body", False):
                total, duration = series.by_status.get(status) or self._status_series(series, endpoint, status)
                total.inc()
                duration.observe(max(default_timer() - started, 0))
            await send(message)

        series.in_progress.inc()
        try:
            await self.app(scope, receive, timed_send)
        finally:
            series.in_progress.dec()

    def _labels(self) -> dict[str, Any]:
        return {
            "service_name": server_context.bento_name,
            "service_version": server_context.bento_version,
            "runner_name": server_context.service_name,
        }

    def _endpoint_series(self, endpoint: str) -> _EndpointSeries:
        labels = self._labels()
        series = _EndpointSeries(
            in_progress=self.metrics_request_in_progress.labels(endpoint=endpoint, **labels),
            last_request=None
            if endpoint.startswith(tuple(self.skip_paths))
            else self.metrics_last_request_timestamp.labels(**labels),
        )
        if len(self._series) < _MAX_CACHED_ENDPOINTS:
            self._series[endpoint] = series
        return series

    def _status_series(self, series: _EndpointSeries, endpoint: str, status: int) -> tuple[Any, Any]:
        labels = {"endpoint": endpoint, "http_response_code": status, **self._labels()}
        found = (self.metrics_request_total.labels(**labels), self.metrics_request_duration.labels(**labels))
        series.by_status[status] = found
        return found
