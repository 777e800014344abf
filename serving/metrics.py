"""slipway's own Prometheus metrics, served on BentoML's /metrics beside its request-duration histograms.

BentoML workers run prometheus_client in multiprocess mode: each worker sets PROMETHEUS_MULTIPROC_DIR (a folder
under BENTOML_HOME) before it builds the service, and /metrics merges every worker's files. So the metrics are
created on first use inside the worker, never at import (the service module is imported by the arbiter too,
before that variable is set), and once per process (two objects of one name would overwrite each other's file).
The inference log's metrics (slipway_inference_log_*) are created the same way by serving.inference_log.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge

ERROR_KINDS = ("validation", "auth", "body_too_large", "internal")

_LOCK = threading.Lock()
_METRICS: ServiceMetrics | None = None


@dataclass(frozen=True)
class ServiceMetrics:
    """Rows predicted, requests refused or failed by kind, and which model this worker serves."""

    prediction_rows: Counter
    errors: Counter
    model_info: Gauge

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
            )
        return _METRICS
