"""The slipway Bento service: POST /predict over one ONNX model, typed from its `slipway.json`.

Which model: the Bento argument `model_tag` (written into the Bento by `tasks.package.build_bento`), or
SLIPWAY_MODEL_TAG when serving from source. The request schema is built here, at import, because BentoML
derives the OpenAPI document and the request validation from the API signature; everything else lives in
plain functions (serving.predictor, serving.schema). Health: BentoML's own /livez, /healthz (same as livez)
and /readyz; OpenAPI at /docs.json.
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml
from bentoml.models import BentoModel

from serving.options import OptionsError, options_from_env
from serving.predictor import Predictor, predict_response, request_id_from
from serving.schema import request_model, response_model
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
PredictRequest = request_model(SPEC, OPTIONS.max_batch_rows)
PredictResponse = response_model(SPEC)


@bentoml.service(
    name="slipway",
    workers=OPTIONS.workers,
    threads=1,
    traffic={"timeout": OPTIONS.timeout_s},
    labels={"model_name": SPEC.model_name, "model_version": SPEC.model_version},
)
class SlipwayService:
    """Serves one slipway model; one ONNX Runtime session per worker process."""

    model = BentoModel(OPTIONS.model_tag)

    def __init__(self) -> None:
        self.predictor = Predictor.load(Path(self.model.path), SPEC)

    @bentoml.api(route="/predict")
    def predict(
        self,
        request: PredictRequest,  # type: ignore[valid-type]
        /,
        ctx: bentoml.Context,
    ) -> PredictResponse:  # type: ignore[valid-type]
        """Predict a batch given as `records` (list of objects) or `columns` (feature -> list)."""
        request_id = request_id_from(ctx.request.headers.get("x-request-id"))
        ctx.response.headers["x-request-id"] = request_id
        return predict_response(self.predictor, request, request_id, PredictResponse)
