"""The limit: a bare ASGI app (no framework) around slipway's own Predictor, served by uvicorn with httptools.

Same request and response JSON as slipway's POST /predict (its `records` and `columns` forms), no validation
beyond what JSON parsing and the feed conversion do. What slipway's endpoint loses against this is the cost of
its framework and validation. Run as `uvicorn bench.asgi_floor:app` with SLIPWAY_BENCH_MODEL_DIR naming a folder
that holds `model.onnx` and `slipway.json` (a BentoML model saved by tasks.package); the model loads at
lifespan start-up, once per worker.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import orjson

from serving.predictor import Predictor
from serving.spec import read_spec

MODEL_DIR_ENV = "SLIPWAY_BENCH_MODEL_DIR"
_state: dict[str, Any] = {}
_JSON_HEADERS = [(b"content-type", b"application/json")]


def _load() -> None:
    model_dir = Path(os.environ[MODEL_DIR_ENV])
    spec = read_spec(model_dir)
    predictor = Predictor.load(model_dir, spec)
    _state["predictor"] = predictor
    _state["names"] = [name for name, _ in spec.feature_pairs]
    _state["identity"] = {
        "classes": list(spec.classes) if spec.classes is not None else None,
        "model_name": spec.model_name,
        "model_version": spec.model_version,
    }


async def _reply(send: Any, status: int, payload: Any) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _JSON_HEADERS})
    await send({"type": "http.response.body", "body": orjson.dumps(payload)})


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _predict(body: bytes) -> dict[str, Any]:
    request = orjson.loads(body)
    records = request.get("records")
    if records is None:
        columns = request["columns"]
    else:
        columns = {name: [row[name] for row in records] for name in _state["names"]}
    result = _state["predictor"].predict(columns)
    return {
        "predictions": result.predictions,
        "probabilities": result.probabilities,
        **_state["identity"],
        "request_id": uuid.uuid4().hex,
    }


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """POST /predict ({"records": [...]}) and GET /readyz; the model is loaded at lifespan start-up."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    _load()
                except Exception as exc:  # reported to uvicorn, which refuses to start
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/readyz":
        await _reply(send, 200 if "predictor" in _state else 503, {"ready": "predictor" in _state})
        return
    if scope["path"] != "/predict" or scope["method"] != "POST":
        await _reply(send, 404, {"error": "POST /predict or GET /readyz"})
        return
    body = await _read_body(receive)
    try:
        payload = _predict(body)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        await _reply(send, 400, {"error": f"{type(exc).__name__}: {exc}"})
        return
    await _reply(send, 200, payload)
