"""A real Bento of the shipped example, served by a real `bentoml serve` on 127.0.0.1.

Proves: the Bento holds only the serving package and the saved model, builds without the network in seconds
and idempotently; the server answers what in-process ONNX Runtime answers, for both request forms; every
kind of bad input gets a 4xx naming the field (never a 5xx) and stays out of the log; the OpenAPI document
lists the real feature names; a tampered model stops the server at start-up.

The ONNX conversion is done here with skl2onnx (one input per feature, no ZipMap, outputs `label` and
`probabilities`; numeric inputs declared double as the feeds send them, and cast to the float the skl2onnx graph
was built for) so these tests do not depend on tasks.convert.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import yaml

from examples.breast_cancer import SIZE_BANDS
from serving.features import feeds_from_columns
from serving.spec import MODEL_FILE, SPEC_FILE, ServingSpec, file_sha256
from tasks.types import BentoRef, FeatureSpec, ModelSchema
from tests.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL_NAME = "Breast-Cancer Classifier"  # deliberately not a valid BentoML name
MODEL_VERSION = "3"
MAX_BATCH_ROWS = 50
SERVER_START_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class ExampleModel:
    onnx_path: Path
    schema: ModelSchema
    rows: pd.DataFrame  # feature columns only, rows the model never saw


@dataclass(frozen=True)
class BuiltBento:
    ref: BentoRef
    home: Path
    build_seconds: float


@dataclass(frozen=True)
class RunningServer:
    url: str
    start_seconds: float
    log_path: Path
    pid: int  # the `bentoml serve` process; its workers are its children


def example_schema(frame: pd.DataFrame, target: str) -> ModelSchema:
    """The ModelSchema of the breast-cancer example: floats plus the `size_band` string."""
    features = tuple(
        FeatureSpec(name=c, dtype="string" if frame[c].dtype == object else "float")
        for c in frame.columns
        if c != target
    )
    return ModelSchema(task="classification", features=features, target=target, classes=(0, 1))


def convert_example(model: object, schema: ModelSchema, path: Path) -> None:
    """skl2onnx with the feed convention of serving/features.py: one [rows, 1] input per feature, numbers double."""
    from onnx import TensorProto, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    inputs = [
        (f.name, StringTensorType([None, 1]) if f.dtype == "string" else FloatTensorType([None, 1]))
        for f in schema.features
    ]
    estimator = model.steps[-1][1]  # type: ignore[attr-defined]
    onx = convert_sklearn(
        model,
        initial_types=inputs,
        options={id(estimator): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    names = {o.name for o in onx.graph.output}
    assert names == {"label", "probabilities"}, f"unexpected ONNX outputs {names}"
    # skl2onnx's double version of this pipeline does not load in ONNX Runtime (its tree op's output type), so the
    # float graph gets double inputs, each cast to float in front of the nodes that read it.
    casts = []
    for value in onx.graph.input:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
            as_float = f"{value.name}__as_float"
            for node in onx.graph.node:
                node.input[:] = [as_float if name == value.name else name for name in node.input]
            casts.append(helper.make_node("Cast", [value.name], [as_float], to=TensorProto.FLOAT))
    nodes = [*casts, *onx.graph.node]
    del onx.graph.node[:]
    onx.graph.node.extend(nodes)
    path.write_bytes(onx.SerializeToString())


# --- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_model(tmp_path_factory: pytest.TempPathFactory) -> ExampleModel:
    """The shipped example, trained quickly on 80% of its data and converted to ONNX."""
    from examples.breast_cancer import build_model, load_data

    frame = load_data()
    schema = example_schema(frame, "malignant")
    train = frame.sample(frac=0.8, random_state=0)
    rest = frame.drop(train.index)
    model = build_model({"max_iter": 20, "random_state": 0})
    model.fit(train[schema.feature_names], train["malignant"])
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    convert_example(model, schema, path)
    return ExampleModel(onnx_path=path, schema=schema, rows=rest[schema.feature_names].head(40))


@pytest.fixture(scope="module")
def built_bento(example_model: ExampleModel, tmp_path_factory: pytest.TempPathFactory) -> BuiltBento:
    """The example saved to a temporary BentoML home and built into a Bento there."""
    from tasks.package import build_bento, save_bento_model

    home = tmp_path_factory.mktemp("bentoml-home")
    tag = save_bento_model.fn(
        example_model.onnx_path,
        example_model.schema,
        label_output="label",
        score_output="probabilities",
        model_name=MODEL_NAME,
        model_version=MODEL_VERSION,
        bentoml_home=home,
    )
    started = time.perf_counter()
    ref = build_bento.fn(tag, "breast-cancer", home)
    return BuiltBento(ref=ref, home=home, build_seconds=time.perf_counter() - started)


def serve_command(bento_tag: str, port: int) -> list[str]:
    """`bentoml serve` of a stored Bento, on loopback only."""
    return [sys.executable, "-m", "bentoml", "serve", bento_tag, "--host", "127.0.0.1", "--port", str(port)]


def serve_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment tasks.package gives BentoML children, plus the service's own knobs."""
    from tasks.package import bentoml_env

    env = bentoml_env(home)
    env.update(extra)
    return env


def stop_server(process: subprocess.Popen[Any], grace_s: float = 15.0) -> None:
    """SIGTERM the server's process group (arbiter and workers), then SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace_s)


def wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    """Poll /readyz until it answers 200; fail with the server log if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"bentoml serve exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"bentoml serve not ready after {timeout_s:.0f} s:\n{log_path.read_text()[-4000:]}")


def start_server(bento: BuiltBento, folder: Path, **env: str) -> tuple[subprocess.Popen[bytes], RunningServer]:
    """`bentoml serve` of the Bento on a free loopback port with the given SLIPWAY_* settings, ready; its log in
    `folder`. Stopped (and the error raised) when it does not get ready."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = folder / "bentoml-serve.log"
    started = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            serve_command(bento.ref.tag, port),
            env=serve_env(bento.home, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown reaches the workers too
        )
    try:
        wait_ready(url, process, log_path, SERVER_START_TIMEOUT_S)
    except BaseException:
        stop_server(process)
        raise
    return process, RunningServer(
        url=url, start_seconds=time.perf_counter() - started, log_path=log_path, pid=process.pid
    )


@pytest.fixture(scope="module")
def server(built_bento: BuiltBento, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A real `bentoml serve` of the built Bento: one worker, batches capped at MAX_BATCH_ROWS."""
    process, running = start_server(
        built_bento,
        tmp_path_factory.mktemp("server"),
        SLIPWAY_WORKERS="1",
        SLIPWAY_MAX_BATCH_ROWS=str(MAX_BATCH_ROWS),
    )
    try:
        yield running
    finally:
        stop_server(process)


def records_of(example: ExampleModel, rows: int | None = None) -> list[dict[str, Any]]:
    frame = example.rows if rows is None else example.rows.head(rows)
    return frame.to_dict(orient="records")


def columns_of(example: ExampleModel) -> dict[str, list[Any]]:
    return {name: example.rows[name].tolist() for name in example.schema.feature_names}


def model_dir(bento: BuiltBento) -> Path:
    name, version = bento.ref.model_tag.split(":")
    return bento.home / "models" / name / version


def post_predict(server: RunningServer, body: Any = None, raw: str | None = None, **headers: str) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body)
    return httpx.post(
        f"{server.url}/predict",
        content=content,
        headers={"content-type": "application/json", **headers},
        timeout=30.0,
    )


# --- the model in the store and the Bento ---------------------------------------------------------------


def test_model_store_holds_the_onnx_file_and_its_descriptor(built_bento: BuiltBento, example_model: ExampleModel):
    # Given the example saved under a registry name that is not a valid BentoML name
    folder = model_dir(built_bento)
    # Then the tag is derived from it, and its version shows the MLflow version and the file hash
    name, version = built_bento.ref.model_tag.split(":")
    sha = file_sha256(example_model.onnx_path)
    assert name == "breast-cancer-classifier"
    assert version == f"v{MODEL_VERSION}-{sha[:12]}"
    # And the store holds the identical ONNX file with a descriptor of the model
    assert file_sha256(folder / MODEL_FILE) == sha
    spec = ServingSpec.model_validate_json((folder / SPEC_FILE).read_text())
    assert spec.model_name == MODEL_NAME and spec.model_version == MODEL_VERSION
    assert spec.task == "classification" and spec.classes == (0, 1)
    assert [f.name for f in spec.features] == example_model.schema.feature_names
    assert {f.dtype for f in spec.features} == {"float", "string"}
    # And the descriptor lists the bands the model's one-hot encoder knows (it encodes others as all zeros)
    (band,) = (f for f in spec.features if f.dtype == "string")
    assert (band.name, band.categories, band.encodes_unknown) == ("size_band", tuple(SIZE_BANDS), True)
    assert all(f.categories is None for f in spec.features if f.dtype == "float")
    assert (spec.label_output, spec.score_output, spec.sha256) == ("label", "probabilities", sha)


def test_bento_source_is_only_the_serving_package(built_bento: BuiltBento):
    # Given the built Bento
    src = built_bento.ref.path / "src"
    files = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    # Then its source is the serving package (and the generated bentofile), nothing of tasks/flows/configs
    assert files - {"bentofile.yaml"} == {f for f in files if f.startswith("serving/") and f.endswith(".py")}
    assert {"serving/service.py", "serving/features.py", "serving/spec.py"} <= files
    # And it references the saved model and carries its tag as the Bento argument the service reads
    info = yaml.safe_load((built_bento.ref.path / "bento.yaml").read_text())
    assert info["args"] == {"model_tag": built_bento.ref.model_tag}
    assert [m["tag"] for m in info["services"][0]["models"]] == [built_bento.ref.model_tag]


def test_bento_build_is_offline_and_fast(built_bento: BuiltBento, record_property: Any):
    record_property("bento_build_seconds", round(built_bento.build_seconds, 2))
    # Given the Bento's Python environment
    python_env = built_bento.ref.path / "env" / "python"
    requirements = (python_env / "requirements.txt").read_text()
    # Then packages are pinned to this environment but not locked (locking resolves over the network)
    assert not (python_env / "requirements.lock.txt").exists()
    for package in ("numpy==", "onnxruntime==", "pydantic==", "bentoml=="):
        assert package in requirements
    # And the build took seconds, not a resolver run
    assert built_bento.build_seconds < 30, f"bentoml build took {built_bento.build_seconds:.1f} s"


def test_saving_and_building_again_reuse_what_exists(built_bento: BuiltBento, example_model: ExampleModel, tmp_path):
    from tasks.package import build_bento, save_bento_model

    # When the same model is saved and built again
    started = time.perf_counter()
    tag = save_bento_model.fn(
        example_model.onnx_path,
        example_model.schema,
        "label",
        "probabilities",
        MODEL_NAME,
        MODEL_VERSION,
        built_bento.home,
    )
    ref = build_bento.fn(tag, "Breast Cancer", built_bento.home)  # normalized to breast-cancer
    # Then nothing is rebuilt: same tags, no BentoML process started
    assert (tag, ref) == (built_bento.ref.model_tag, built_bento.ref)
    assert time.perf_counter() - started < 1.0


def test_saving_a_different_descriptor_under_an_existing_tag_is_refused(
    built_bento: BuiltBento, example_model: ExampleModel
):
    from tasks.errors import InvalidModelArtifact
    from tasks.package import save_bento_model

    # Given the same ONNX file (same tag) but a schema that claims other classes
    schema = example_model.schema.model_copy(update={"classes": ("benign", "malignant")})
    # When it is saved, then the store is not silently reused
    with pytest.raises(InvalidModelArtifact, match="different descriptor"):
        save_bento_model.fn(
            example_model.onnx_path, schema, "label", "probabilities", MODEL_NAME, MODEL_VERSION, built_bento.home
        )


# --- the running server ------------------------------------------------------------------------------------


def test_health_endpoints_answer(server: RunningServer, record_property: Any):
    record_property("server_start_seconds", round(server.start_seconds, 2))
    for path in ("/livez", "/healthz", "/readyz"):
        assert httpx.get(f"{server.url}{path}", timeout=5.0).status_code == 200, path


def test_records_predictions_equal_in_process_onnx_runtime(server: RunningServer, example_model: ExampleModel):
    # Given the same rows run through ONNX Runtime in this process
    session = ort.InferenceSession(str(example_model.onnx_path), providers=["CPUExecutionProvider"])
    features = [(f.name, f.dtype) for f in example_model.schema.features]
    labels, probabilities = session.run(["label", "probabilities"], feeds_from_columns(features, example_model.rows))
    # When the server is asked for them as records
    response = post_predict(server, {"records": records_of(example_model)}, **{"x-request-id": "test-42"})
    # Then it returns the same labels and probabilities, with the model identity and the request id
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["predictions"] == labels.reshape(-1).tolist()
    np.testing.assert_allclose(np.asarray(body["probabilities"]), probabilities, rtol=0, atol=1e-6)
    assert body["classes"] == [0, 1]
    assert (body["model_name"], body["model_version"]) == (MODEL_NAME, MODEL_VERSION)
    assert body["request_id"] == "test-42" == response.headers["x-request-id"]


def test_columns_form_gives_the_same_answer_as_records(server: RunningServer, example_model: ExampleModel):
    by_records = post_predict(server, {"records": records_of(example_model)}).json()
    by_columns = post_predict(server, {"columns": columns_of(example_model)}).json()
    assert by_columns["predictions"] == by_records["predictions"]
    assert by_columns["probabilities"] == by_records["probabilities"]
    assert by_columns["request_id"] != by_records["request_id"]  # a fresh id when the caller sends none


def _bad_bodies(example: ExampleModel) -> dict[str, tuple[str, str]]:
    """Case name -> (raw JSON body, the field the error must name)."""
    good = records_of(example, 1)[0]

    def with_row(**changes: Any) -> str:
        row = {**good, **changes}
        return json.dumps({"records": [{k: v for k, v in row.items() if v is not _DROP}]})

    columns = columns_of(example)
    ragged = {**columns, "mean_area": columns["mean_area"][:-1]}
    too_many = {name: values * (MAX_BATCH_ROWS // len(values) + 1) for name, values in columns.items()}
    return {
        "missing field": (with_row(mean_radius=_DROP), "mean_radius"),
        "number field given text": (with_row(mean_radius="large"), "mean_radius"),
        "text field given a number": (with_row(size_band=3), "size_band"),
        "category the model does not know": (with_row(size_band="enormous"), "size_band"),
        "unknown category in columns": (
            json.dumps({"columns": {**columns, "size_band": ["enormous"] * len(columns["size_band"])}}),
            "size_band",
        ),
        "null value": (with_row(mean_texture=None), "mean_texture"),
        "unknown field": (with_row(patient_name="x"), "patient_name"),
        "NaN": (with_row(mean_area=_MARK).replace(f'"{_MARK}"', "NaN"), "mean_area"),
        "Infinity": (with_row(mean_area=_MARK).replace(f'"{_MARK}"', "-Infinity"), "mean_area"),
        "beyond float64": (with_row(mean_area=_MARK).replace(f'"{_MARK}"', "1e400"), "mean_area"),
        "empty records": (json.dumps({"records": []}), "records"),
        "records over max rows": (json.dumps({"records": [good] * (MAX_BATCH_ROWS + 1)}), "records"),
        "columns over max rows": (json.dumps({"columns": too_many}), "columns"),
        "columns of different lengths": (json.dumps({"columns": ragged}), "mean_area"),
        "neither records nor columns": (json.dumps({"rows": [good]}), "rows"),
        "both records and columns": (json.dumps({"records": [good], "columns": columns}), "records"),
        "not JSON": ("{records: [", "json"),
    }


_DROP = object()
_MARK = "__not_a_number__"  # replaced by a bare NaN/Infinity token, which json.dumps cannot write
_BAD_CASES = [
    "missing field", "number field given text", "text field given a number", "category the model does not know",
    "unknown category in columns", "null value", "unknown field",
    "NaN", "Infinity", "beyond float64", "empty records", "records over max rows", "columns over max rows",
    "columns of different lengths", "neither records nor columns", "both records and columns", "not JSON",
]  # fmt: skip


@pytest.mark.parametrize("case", _BAD_CASES)
def test_bad_input_gets_4xx_naming_the_field(server: RunningServer, example_model: ExampleModel, case: str):
    # Given a request that is wrong in one way
    raw, field = _bad_bodies(example_model)[case]
    # When it is posted
    response = post_predict(server, raw=raw)
    # Then the server refuses it as the caller's fault and says which field is wrong
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert field in response.text, response.text


def test_a_category_the_model_does_not_know_is_refused_with_the_values_it_knows(
    server: RunningServer, example_model: ExampleModel
):
    # Given a row whose size_band is none of the bands the model's encoder was fitted on (the encoder would
    # silently read it as no band at all: handle_unknown="ignore")
    row = {**records_of(example_model, 1)[0], "size_band": "Enormous-Band"}
    # When it is posted
    response = post_predict(server, {"records": [row]})
    # Then it is a 400 naming the field and every value the model knows, without echoing the value sent
    assert response.status_code == 400, response.text
    assert "records.0.size_band" in response.text
    assert all(repr(band) in response.json()["detail"] for band in SIZE_BANDS), response.text
    assert "Enormous-Band" not in response.text


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(
    server: RunningServer, example_model: ExampleModel
):
    # Given bursts of 48 requests of 1 to 5 rows sent at once to the one-worker server, each with its own id
    import asyncio
    import re

    session = ort.InferenceSession(str(example_model.onnx_path), providers=["CPUExecutionProvider"])
    features = [(f.name, f.dtype) for f in example_model.schema.features]
    rows = records_of(example_model)

    def batches() -> tuple[float, float]:
        text = httpx.get(f"{server.url}/metrics", timeout=10.0).text
        found = dict(re.findall(r"^slipway_predict_batch_requests_(count|sum) ([0-9.e+]+)$", text, re.M))
        return float(found.get("count", 0)), float(found.get("sum", 0))

    async def burst(client: httpx.AsyncClient, first: int) -> list[tuple[list[dict[str, Any]], httpx.Response]]:
        bodies = [[rows[(first + i + j) % len(rows)] for j in range(1 + i % 5)] for i in range(48)]
        answers = await asyncio.gather(
            *(
                client.post("/predict", json={"records": body}, headers={"x-request-id": f"burst-{first}-{i}"})
                for i, body in enumerate(bodies)
            )
        )
        return list(zip(bodies, answers, strict=True))

    async def run() -> tuple[list[tuple[list[dict[str, Any]], httpx.Response]], float, float]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
            answered = []
            calls, requests = batches()
            for attempt in range(5):  # a burst meets the worker's event loop together: some share a model call
                answered += await burst(client, attempt * 48)
                after_calls, after_requests = batches()
                if after_calls - calls < after_requests - requests:
                    break
            return answered, after_calls - calls, after_requests - requests

    answered, calls, requests = asyncio.run(run())
    # Then every request got a 200 with its own id and exactly what in-process ONNX Runtime answers for its rows
    for i, (body, response) in enumerate(answered):
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["request_id"] == response.headers["x-request-id"] == f"burst-{i // 48 * 48}-{i % 48}"
        columns = {name: [row[name] for row in body] for name, _ in features}
        labels, probabilities = session.run(["label", "probabilities"], feeds_from_columns(features, columns))
        assert answer["predictions"] == labels.reshape(-1).tolist()
        np.testing.assert_allclose(np.asarray(answer["probabilities"]), probabilities, rtol=0, atol=1e-6)
    # And fewer model calls than requests were made: requests were batched
    assert requests == len(answered) and calls < requests, (calls, requests)


def test_finite_values_beyond_float32_are_answered(server: RunningServer, example_model: ExampleModel):
    # Given rows with finite doubles far beyond float32's range (numbers are fed to ONNX as float64)
    rows = records_of(example_model, 3)
    for row, value in zip(rows, (1e300, -1e300, 1e39), strict=True):
        row["mean_area"] = value
    # When they are posted
    response = post_predict(server, {"records": rows})
    # Then they are answered, not refused and not a 5xx, with what in-process ONNX Runtime answers
    assert response.status_code == 200, response.text
    session = ort.InferenceSession(str(example_model.onnx_path), providers=["CPUExecutionProvider"])
    features = [(f.name, f.dtype) for f in example_model.schema.features]
    columns = {name: [row[name] for row in rows] for name in example_model.schema.feature_names}
    labels, probabilities = session.run(["label", "probabilities"], feeds_from_columns(features, columns))
    assert response.json()["predictions"] == labels.reshape(-1).tolist()
    np.testing.assert_allclose(np.asarray(response.json()["probabilities"]), probabilities, rtol=0, atol=1e-6)


def test_rejected_values_stay_out_of_the_server_log(server: RunningServer, example_model: ExampleModel):
    # Given a request rejected for an unknown field whose value is personal data
    row = {**records_of(example_model, 1)[0], "patient_secret_field": "Jane Secret-Doe"}
    assert post_predict(server, {"records": [row]}).status_code == 400
    # When BentoML has logged the rejection
    deadline = time.monotonic() + 5
    while "patient_secret_field" not in server.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server.log_path.read_text()
    # Then the log names the field but not its value
    assert "patient_secret_field" in log
    assert "Jane Secret-Doe" not in log


def test_server_still_serves_after_bad_input(server: RunningServer, example_model: ExampleModel):
    post_predict(server, raw="[1, 2]")
    assert post_predict(server, {"records": records_of(example_model, 2)}).status_code == 200


def test_max_batch_rows_is_accepted_exactly(server: RunningServer, example_model: ExampleModel):
    rows = (records_of(example_model) * 2)[:MAX_BATCH_ROWS]
    response = post_predict(server, {"records": rows})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == MAX_BATCH_ROWS


def test_openapi_lists_the_real_feature_names_and_types(server: RunningServer, example_model: ExampleModel):
    # When the OpenAPI document is read
    doc = httpx.get(f"{server.url}/docs.json", timeout=10.0).json()
    assert "/predict" in doc["paths"]
    schemas = doc["components"]["schemas"]
    record = next(s for name, s in schemas.items() if name.endswith("Record"))
    # Then a record has exactly the model's features, all required, typed from the descriptor
    assert list(record["properties"]) == example_model.schema.feature_names
    assert record["required"] == example_model.schema.feature_names
    assert record["additionalProperties"] is False
    assert record["properties"]["size_band"]["type"] == "string"
    assert record["properties"]["size_band"]["enum"] == SIZE_BANDS  # the values the model knows, in its order
    assert record["properties"]["mean_radius"]["type"] == "number"
    assert "maximum" not in record["properties"]["mean_radius"]  # any finite double (fed as float64)


# --- refusing a tampered model -----------------------------------------------------------------------------


def test_tampered_model_file_stops_the_server_at_start(built_bento: BuiltBento, tmp_path: Path):
    # Given a copy of the BentoML home whose model.onnx changed after it was saved
    home = tmp_path / "bentoml-home"
    shutil.copytree(built_bento.home, home, symlinks=True)
    name, version = built_bento.ref.model_tag.split(":")
    with (home / "models" / name / version / MODEL_FILE).open("ab") as handle:
        handle.write(b"\0")
    # When the Bento is served from it
    process = subprocess.Popen(
        serve_command(built_bento.ref.tag, free_port()),
        env=serve_env(home, SLIPWAY_WORKERS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=60)
    finally:
        stop_server(process)  # only does something if it did not exit on its own
    # Then the server exits with an error naming the hash mismatch instead of serving
    assert process.returncode != 0
    assert "ModelIntegrityError" in output and "sha256" in output, output[-2000:]


# --- the same plain functions in-process: a regressor with awkward feature names --------------------------


def _tiny_regressor(folder: Path, number_type: int | None = None) -> ServingSpec:
    """An ONNX graph `prediction = model_config + age years + smoker` plus an unused string input.

    Numbers are tensor(double) inputs as the feed convention sends them, unless `number_type` says otherwise.
    """
    import onnx
    from onnx import TensorProto, helper

    elem = TensorProto.DOUBLE if number_type is None else number_type
    numbers = ["model_config", "age years", "smoker"]
    inputs = [helper.make_tensor_value_info(n, elem, [None, 1]) for n in numbers]
    inputs.append(helper.make_tensor_value_info("region", TensorProto.STRING, [None, 1]))
    nodes = [
        helper.make_node("Add", ["model_config", "age years"], ["partial"]),
        helper.make_node("Add", ["partial", "smoker"], ["prediction"]),
    ]
    output = helper.make_tensor_value_info("prediction", elem, [None, 1])
    graph = helper.make_graph(nodes, "tiny", inputs, [output])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(folder / MODEL_FILE))
    features = [("model_config", "float"), ("age years", "int"), ("smoker", "bool"), ("region", "string")]
    spec = ServingSpec.model_validate(
        {
            "model_name": "tiny",
            "model_version": "1",
            "task": "regression",
            "features": [{"name": n, "dtype": d} for n, d in features],
            "label_output": "prediction",
            "score_output": "prediction",
            "sha256": file_sha256(folder / MODEL_FILE),
        }
    )
    (folder / SPEC_FILE).write_text(spec.model_dump_json(), encoding="utf-8")
    return spec


def test_regressor_predicts_in_process_through_the_service_functions(tmp_path: Path):
    from pydantic import ValidationError

    from serving.predictor import Predictor, predict_response
    from serving.schema import request_model, response_model

    # Given a regressor whose features include a pydantic-reserved name, a space, an int, a bool and a string
    spec = _tiny_regressor(tmp_path / "model")
    predictor = Predictor.load(tmp_path / "model", spec)
    request_type, response_type = request_model(spec, max_rows=2), response_model(spec)
    row = {"model_config": 1.5, "age years": 2, "smoker": True, "region": "north"}
    # When rows arrive in either form
    by_records = request_type.model_validate_json(json.dumps({"records": [row, row]}))
    by_columns = request_type.model_validate_json(json.dumps({"columns": {k: [v, v] for k, v in row.items()}}))
    # Then both give the value, without classes or probabilities
    for request in (by_records, by_columns):
        response = predict_response(predictor, request, "r1", response_type)
        assert response.predictions == [4.5, 4.5]
        assert response.probabilities is None and response.classes is None
    # And an int feature refuses a fraction, a bool refuses 1, and a third row is over the limit
    for bad in ({**row, "age years": 2.5}, {**row, "smoker": 1}):
        with pytest.raises(ValidationError):
            request_type.model_validate_json(json.dumps({"records": [bad]}))
    with pytest.raises(ValidationError, match="records"):
        request_type.model_validate_json(json.dumps({"records": [row] * 3}))


def test_predictor_refuses_a_model_file_that_does_not_match_its_descriptor(tmp_path: Path):
    from serving.predictor import Predictor
    from serving.spec import ModelIntegrityError

    spec = _tiny_regressor(tmp_path / "model")
    tampered = spec.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(ModelIntegrityError, match="sha256"):
        Predictor.load(tmp_path / "model", tampered)
    renamed = spec.model_copy(update={"features": spec.features[:-1]})
    with pytest.raises(ModelIntegrityError, match="region"):
        Predictor.load(tmp_path / "model", renamed)


def test_predictor_refuses_a_model_built_for_float32_feeds(tmp_path: Path):
    from onnx import TensorProto

    from serving.predictor import Predictor
    from serving.spec import ModelIntegrityError

    # Given a model whose numeric inputs are tensor(float) (converted for the old float32 feeds)
    spec = _tiny_regressor(tmp_path / "model", number_type=TensorProto.FLOAT)
    # When it is loaded, then it is refused at start-up, naming the inputs and the type the service sends,
    # instead of every request failing inside ONNX Runtime
    with pytest.raises(ModelIntegrityError, match=r"'age years': 'tensor\(float\)'.*tensor\(double\)"):
        Predictor.load(tmp_path / "model", spec)
