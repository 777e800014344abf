"""The slipway Bento service: POST /predict over one ONNX model, typed from its `slipway.json`.

Which model: the Bento argument `model_tag` (written into the Bento by `tasks.package.build_bento`), or
SLIPWAY_MODEL_TAG when serving from source. The request schema is built here, at import, because BentoML
derives the OpenAPI document and the request validation from the API signature; everything else lives in
plain functions (serving.predictor, serving.schema). Health: BentoML's own /livez, /healthz (same as livez)
and /readyz, which answers 200 only once every worker has loaded (serving.readiness); OpenAPI at /docs.json.

Environment (full list; see serving.options and serving.inference_log):
SLIPWAY_MODEL_TAG, SLIPWAY_WORKERS, SLIPWAY_MAX_BATCH_ROWS, SLIPWAY_TIMEOUT_S, SLIPWAY_API_KEYS,
SLIPWAY_AUTH_OPEN_PATHS, SLIPWAY_MAX_BODY_BYTES, SLIPWAY_FAST_PATH, SLIPWAY_ADAPTIVE_BATCHING, SLIPWAY_ACCESS_LOG,
SLIPWAY_UNKNOWN_CATEGORIES,
SLIPWAY_INFERENCE_LOG_URL,
SLIPWAY_INFERENCE_LOG_BATCH_ROWS, SLIPWAY_INFERENCE_LOG_FLUSH_S, SLIPWAY_INFERENCE_LOG_QUEUE_MB.

Request path: serving.guard.RequestGuard (ASGI middleware, put behind BentoML's request metrics and access log
but ahead of its tracing and timeout: serving.guard.front_middlewares) refuses a missing/wrong API key (401) and
an oversized body (413) before BentoML parses anything, then hands POST /predict to serving.fastpath (same
schema, answers and 400s, a fraction of the per-request cost; SLIPWAY_FAST_PATH=0 turns it off) or else to
the BentoML API below; either validates, predicts, and hands the request to
the inference log queue (never blocks; a writer thread per worker writes it). The log is created in each
worker's __init__ (threads do not survive fork) and flushed by the on_shutdown hook on a graceful stop
(SIGTERM), with atexit as a second net.

Metrics: /metrics is BentoML's (its request histograms per endpoint) plus slipway_prediction_rows_total,
slipway_predict_batch_requests (requests per model call of the fast path's adaptive batching),
slipway_errors_total{kind=validation|auth|body_too_large|internal}, slipway_model_info{model_name,
model_version} = 1 and slipway_inference_log_{rows_written_total,rows_dropped_total{reason},queue_rows}.
Workers write them in prometheus multiprocess mode to a folder BentoML derives from BENTOML_HOME: two servers
on one host must each have their own BENTOML_HOME, or their counters mix.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import bentoml
from bentoml.models import BentoModel

from serving import fastpath
from serving.decode import RequestDecoder
from serving.fastpath import FastPredict
from serving.guard import RequestGuard, put_guard_in_front, skip_uvicorn_access_log
from serving.inference_log import InferenceLog
from serving.metrics import service_metrics
from serving.options import OptionsError, options_from_env
from serving.predictor import Predictor, request_id_from, response_of
from serving.readiness import WorkerReadiness, served_workers
from serving.schema import request_columns, response_model
from serving.spec import read_spec, verify_model_file

OPTIONS = options_from_env(os.environ, vars(bentoml.use_arguments()))
if OPTIONS.model_tag is None:
    raise OptionsError(
        "no model to serve: build the Bento with tasks.package.build_bento (Bento argument model_tag) "
        "or set SLIPWAY_MODEL_TAG to a tag in the BentoML model store"
    )
# A local lookup (never BentoCloud) so a missing model fails here, naming the tag and the store.
MODEL_DIR = Path(bentoml.models.get(OPTIONS.model_tag).path)
SPEC = read_spec(MODEL_DIR)
# Checked here too, not only when a worker loads the model: `bentoml serve` imports this module before it
# starts workers, so a tampered model stops the server at once instead of a worker restart loop.
verify_model_file(MODEL_DIR, SPEC)
DECODER = RequestDecoder(SPEC, OPTIONS.max_batch_rows, OPTIONS.unknown_categories == "accept")
PredictRequest = DECODER.request_type
PredictResponse = response_model(SPEC)
SERVICE_NAME = "slipway"  # BentoML's configuration addresses it as services.slipway
_GC_YOUNG_THRESHOLD = 10_000  # the cyclic GC's generation-0 threshold in a served worker (Python's default: 700)


@bentoml.service(
    name=SERVICE_NAME,
    workers=OPTIONS.workers,
    threads=1,
    traffic={"timeout": OPTIONS.timeout_s},
    # One log line per request costs more than the model; the HAProxy front keeps an access log anyway.
    logging={"access": {"enabled": OPTIONS.access_log}},
    labels={"model_name": SPEC.model_name, "model_version": SPEC.model_version},
)
class SlipwayService:
    """Serves one slipway model; one ONNX Runtime session and one inference-log writer per worker process."""

    model = BentoModel(OPTIONS.model_tag)

    def __init__(self) -> None:
        self.predictor = Predictor.load(Path(self.model.path), SPEC)
        self.metrics = service_metrics()
        self.metrics.model_info.labels(model_name=SPEC.model_name, model_version=SPEC.model_version).set(1)
        log = InferenceLog.from_env(os.environ)
        self.inference_log = log.start() if log is not None else None
        if OPTIONS.fast_path:
            fastpath.install(
                FastPredict(
                    self.predictor,
                    DECODER,
                    self.metrics,
                    self.inference_log,
                    max_batch_rows=OPTIONS.max_batch_rows,
                    batching=OPTIONS.adaptive_batching,
                )
            )
        # In the worker, before its server opens connections: uvicorn decides per connection.
        skip_uvicorn_access_log()
        # Everything loaded so far (BentoML, pydantic, numpy, ONNX Runtime, the model) lives as long as the worker:
        # out of the garbage collector's sight, a full collection walks only what requests made since. With
        # adaptive batching, requests outlive a loop turn, more objects reach the oldest generation, and full
        # collections over the whole heap stalled a worker for 56-83 ms every few seconds (p99 36-56 ms at one
        # row against 3.8-6.3 ms frozen; measured with gc.callbacks under wrk, BENCHMARKS.md).
        gc.freeze()
        # A young collection every 10,000 container allocations instead of 700: a 100-row request allocates ~130
        # lists (its 30 feature columns, the answer's), so at 700 one ran every few requests and walked every
        # value of the lists still alive, ~17 us of CPU a request (perf, served MLP). What they walk is what is
        # alive at that moment, about the same at either threshold. Served, 100-row requests: +6% req/s alone,
        # +9-13% with the packed float block (serving.features); no change at one row (BENCHMARKS.md, stop 24).
        gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        # Last: /readyz answers ready only once every worker has got here (serving.readiness).
        self.worker_index = bentoml.server_context.worker_index
        self.readiness = WorkerReadiness.of_server(self.worker_index, served_workers(SERVICE_NAME, OPTIONS.workers))
        if self.readiness is not None and self.worker_index is not None:
            self.readiness.mark_ready(self.worker_index, os.getpid())

    async def __is_ready__(self) -> bool:
        """BentoML's /readyz hook: 503 until every worker has loaded its model, not only this one."""
        return self.readiness is None or not self.readiness.waiting()

    @bentoml.on_shutdown
    def close_inference_log(self) -> None:
        """Write what is still queued before the worker exits (graceful stop); this worker is no longer ready."""
        if self.readiness is not None and self.worker_index is not None:
            self.readiness.unmark(self.worker_index)
        if self.inference_log is not None:
            self.inference_log.close()

    @bentoml.api(route="/predict")
    def predict(
        self,
        request: PredictRequest,  # type: ignore[valid-type]
        /,
        ctx: bentoml.Context,
    ) -> PredictResponse:  # type: ignore[valid-type]
        """Predict a batch given as `records` (list of objects) or `columns` (feature -> list)."""
        started = time.perf_counter()
        request_id = request_id_from(ctx.request.headers.get("x-request-id"))
        ctx.response.headers["x-request-id"] = request_id
        columns = request_columns(request)
        feeds = self.predictor.feeds(columns)
        result = self.predictor.run(feeds)
        response = response_of(SPEC, result, request_id, PredictResponse)
        self.metrics.prediction_rows.inc(len(result.predictions))
        if self.inference_log is not None:
            self.inference_log.record_columns(
                request_id,
                SPEC.model_name,
                SPEC.model_version,
                columns,
                result.predictions,
                result.scores,
                (time.perf_counter() - started) * 1000.0,
                floats=feeds.floats,
                float_names=feeds.float_names,
            )
        return response


SlipwayService.add_asgi_middleware(  # type: ignore[attr-defined]  # a bentoml Service once decorated
    RequestGuard,
    api_keys=OPTIONS.api_keys,
    open_paths=OPTIONS.open_paths,
    max_body_bytes=OPTIONS.max_body_bytes,
)
# Before the worker builds its ASGI app from this service: the guard goes in front of BentoML's tracing,
# timeout and context middleware (serving.guard.front_middlewares).
put_guard_in_front()
