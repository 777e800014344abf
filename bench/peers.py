"""The HTTP peers: how each is prepared from the same model, started, fed and read back.

slipway          the real Bento (tasks.package) under `bentoml serve`, its fastest body form (records or columns)
slipway-logged   the same, with the inference log writing every served row to a SQLite file
mlflow-sklearn   `mlflow models serve` of the fitted Pipeline (sklearn flavor, skops), its fastest body form
mlflow-onnx      `mlflow models serve` of the same ONNX file (onnx flavor), its fastest body form
asgi-limit       bench.asgi_floor under uvicorn + httptools + uvloop, the body slipway gets

All of them run from this virtual environment (no per-model environments), bind 127.0.0.1 only, keep their
state under the benchmark's temp folder, and get the same number of worker processes unless a case says so.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.model import LABEL, MODEL_NAME, MODEL_VERSION, PROBABILITIES, BenchModel

REPO_ROOT = Path(__file__).resolve().parent.parent
# ONNX Runtime settings given to the MLflow ONNX flavor: the ones slipway's sessions use (serving.predictor),
# so the comparison is between the serving stacks, not between thread-pool settings.
MLFLOW_ONNX_SESSION_OPTIONS = {
    "intra_op_num_threads": 1,
    "inter_op_num_threads": 1,
    "execution_mode": "sequential",
    "graph_optimization_level": 99,  # ORT_ENABLE_ALL
}


@dataclass(frozen=True)
class Peer:
    """One server under test: how to start it and how to talk to it."""

    name: str
    description: str
    workers: int
    command: list[str]
    env: dict[str, str]
    port: int
    ready_path: str
    predict_path: str
    body: Callable[[list[dict[str, Any]]], dict[str, Any]]
    # JSON answer -> (labels, probabilities or None)
    answers: Callable[[Any], tuple[list[Any], list[list[float]] | None]]
    # Where its reference answers come from: in-process ONNX Runtime, or the fitted scikit-learn model.
    reference: str = "onnx"
    notes: tuple[str, ...] = field(default_factory=tuple)
    # slipway with SLIPWAY_INFERENCE_LOG_URL set: its /metrics says how many rows were written or dropped.
    logs_inferences: bool = False


def quiet_env(tmp: Path) -> dict[str, str]:
    """This environment with telemetry off, temp files under the benchmark folder, and this venv's bin first."""
    env = dict(os.environ)
    env.update(
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="1",
        BENTOML_DO_NOT_TRACK="true",
        TMPDIR=str(tmp),
        # `mlflow models serve` execs `uvicorn` through the shell: without the venv's bin it is "not found".
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    return env


# --- slipway ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlipwayBento:
    """The Bento built from the benchmark model, and the BentoML model folder it serves."""

    home: Path
    bento_tag: str
    model_tag: str
    model_dir: Path


def build_slipway_bento(model: BenchModel, home: Path) -> SlipwayBento:
    """save_bento_model + build_bento (their `.fn`, no Prefect run) into a temp BentoML home."""
    from tasks.package import build_bento, save_bento_model

    model_tag = save_bento_model.fn(
        model.onnx_path, model.schema, LABEL, PROBABILITIES, MODEL_NAME, MODEL_VERSION, home
    )
    ref = build_bento.fn(model_tag, MODEL_NAME, home)
    name, version = model_tag.split(":")
    return SlipwayBento(home=home, bento_tag=ref.tag, model_tag=model_tag, model_dir=home / "models" / name / version)


SLIPWAY_FORMS = ("auto", "records", "columns")
# What `auto` sends slipway (and the ASGI limit) for one-row requests and for batches: its fastest form, measured
# with `--slipway-body records|columns` (BENCHMARKS.md), as MLFLOW_AUTO_FORMS does for the MLflow peers.
SLIPWAY_AUTO_FORMS = ("records", "columns")


def slipway_body(form: str) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The request body of slipway's /predict (and of the ASGI limit) in one of its two forms.

    records  {"records": [{feature: value}, ...]}   one object per row
    columns  {"columns": {feature: [value, ...]}}   one list per feature
    auto     the fastest form for one-row requests and for batches (SLIPWAY_AUTO_FORMS)
    """
    if form not in SLIPWAY_FORMS:
        raise ValueError(f"unknown body form {form!r}; choose one of {SLIPWAY_FORMS}")

    def body(records: list[dict[str, Any]]) -> dict[str, Any]:
        one_row, batch = SLIPWAY_AUTO_FORMS
        chosen = (one_row if len(records) == 1 else batch) if form == "auto" else form
        if chosen == "columns":
            return {"columns": {name: [row[name] for row in records] for name in records[0]}}
        return {"records": records}

    return body


def slipway_peer(
    bento: SlipwayBento,
    port: int,
    workers: int,
    tmp: Path,
    inference_log: str | None = None,
    access_log: bool = True,
    form: str = "auto",
) -> Peer:
    """slipway's Bento under `bentoml serve`; with `inference_log` (a SQLAlchemy URL) every served row is logged;
    `access_log`: BentoML's line per request (on by default, off as `slipway deploy` runs it); `form`: the body
    form (slipway_body)."""
    from tasks.package import bentoml_env

    env = {
        **quiet_env(tmp),
        **bentoml_env(bento.home),
        "TMPDIR": str(tmp),
        "SLIPWAY_WORKERS": str(workers),
        "SLIPWAY_ACCESS_LOG": "1" if access_log else "0",
    }
    notes: tuple[str, ...] = (
        f"SLIPWAY_WORKERS={workers}",
        "BentoML threads=1 per worker (serving/service.py)",
        f"SLIPWAY_ACCESS_LOG={env['SLIPWAY_ACCESS_LOG']}",
        f"body form {form}",
    )
    if inference_log is not None:
        from serving.inference_log import safe_url

        env["SLIPWAY_INFERENCE_LOG_URL"] = inference_log
        shown = (
            "sqlite:///<work folder>/inference_log.db"
            if inference_log.startswith("sqlite:")
            else safe_url(inference_log)
        )
        notes = (*notes, f"SLIPWAY_INFERENCE_LOG_URL={shown}")
    command = [sys.executable, "-m", "bentoml", "serve", bento.bento_tag, "--host", "127.0.0.1", "--port", str(port)]
    return Peer(
        name="slipway" if inference_log is None else "slipway-logged",
        description=f"bentoml serve {bento.bento_tag}" + ("" if inference_log is None else ", inference log on"),
        workers=workers,
        command=command,
        env=env,
        port=port,
        ready_path="/readyz",
        predict_path="/predict",
        body=slipway_body(form),
        answers=lambda answer: (answer["predictions"], answer["probabilities"]),
        notes=notes,
        logs_inferences=inference_log is not None,
    )


# --- MLflow ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MlflowModels:
    """The two logged MLflow models of the benchmark model and the tracking store they live in."""

    tracking_uri: str
    sklearn_uri: str
    onnx_uri: str


def log_mlflow_models(model: BenchModel, folder: Path) -> MlflowModels:
    """Log the fitted Pipeline (sklearn flavor) and its ONNX file (onnx flavor) to a temp SQLite store."""
    import mlflow
    import mlflow.onnx
    import mlflow.sklearn
    import onnx
    import skops.io
    from mlflow.models import infer_signature

    from serving.features import feeds_from_columns

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # "Failed to resolve installed pip version": about conda.yaml, which `--env-manager local` never reads.
    logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)
    folder.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.create_experiment("slipway-bench", artifact_location=(folder / "artifacts").as_uri())
    sample = model.batch(100)
    # skops refuses to load types it does not trust; these are the ones this Pipeline needs.
    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model.estimator))
    with mlflow.start_run(experiment_id=experiment):
        sklearn_info = mlflow.sklearn.log_model(
            model.estimator,
            name="sklearn-model",
            signature=infer_signature(sample, model.estimator.predict(sample)),
            skops_trusted_types=trusted,
            # Explicit requirements: inferring them loads the model in a subprocess, which takes long.
            pip_requirements=_pins("scikit-learn", "skops", "pandas", "numpy"),
        )
        onnx_info = mlflow.onnx.log_model(
            onnx.load(str(model.onnx_path)),
            name="onnx-model",
            signature=infer_signature(feeds_from_columns(model.features, sample)),
            onnx_execution_providers=["CPUExecutionProvider"],
            onnx_session_options=MLFLOW_ONNX_SESSION_OPTIONS,
            save_as_external_data=False,
            pip_requirements=_pins("onnx", "onnxruntime", "numpy"),
        )
    return MlflowModels(tracking_uri=tracking_uri, sklearn_uri=sklearn_info.model_uri, onnx_uri=onnx_info.model_uri)


def _pins(*names: str) -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


def _mlflow_command(model_uri: str, port: int, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        str(workers),
    ]


MLFLOW_FORMS = ("auto", "inputs", "records", "split")
# What `auto` sends (one-row requests, batches): each peer's fastest form, measured on the benchmark machine
# with `--peer <peer> --mlflow-<flavor>-body <form>` (BENCHMARKS.md), so the peers are measured at their best.
MLFLOW_AUTO_FORMS = {"mlflow-onnx": ("inputs", "split"), "mlflow-sklearn": ("inputs", "inputs")}


def mlflow_body(peer: str, form: str) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """The request body of an MLflow peer in one of the forms its scoring server accepts for this model.

    inputs   {"inputs": {feature: values}}   a dict of tensors: [[v], ...] per feature for the ONNX flavor (its
                                             [N, 1] inputs), [v, ...] for the sklearn flavor (DataFrame columns)
    records  {"dataframe_records": [...]}    one object per row
    split    {"dataframe_split": {...}}      column names once, then one list of values per row
    auto     the peer's fastest form for one-row requests and for batches (MLFLOW_AUTO_FORMS)
    """
    if form not in MLFLOW_FORMS:
        raise ValueError(f"unknown body form {form!r}; choose one of {MLFLOW_FORMS}")
    nested = peer == "mlflow-onnx"

    def body(records: list[dict[str, Any]]) -> dict[str, Any]:
        one_row, batch = MLFLOW_AUTO_FORMS[peer]
        chosen = (one_row if len(records) == 1 else batch) if form == "auto" else form
        names = list(records[0])
        if chosen == "inputs":
            return {"inputs": {n: [[row[n]] if nested else row[n] for row in records] for n in names}}
        if chosen == "split":
            return {"dataframe_split": {"columns": names, "data": [[row[n] for n in names] for row in records]}}
        return {"dataframe_records": records}

    return body


def _uvicorn_access_log(access_log: bool) -> tuple[str, str]:
    """The environment variable and value that turn uvicorn's access log on or off: `mlflow models serve` runs
    uvicorn's CLI, which reads its options from UVICORN_* variables."""
    return "UVICORN_ACCESS_LOG", "true" if access_log else "false"


def mlflow_sklearn_peer(
    models: MlflowModels, port: int, workers: int, tmp: Path, form: str = "auto", access_log: bool = True
) -> Peer:
    access_name, access_value = _uvicorn_access_log(access_log)
    return Peer(
        name="mlflow-sklearn",
        description="mlflow models serve, sklearn flavor (skops)",
        workers=workers,
        command=_mlflow_command(models.sklearn_uri, port, workers),
        env={**quiet_env(tmp), "MLFLOW_TRACKING_URI": models.tracking_uri, access_name: access_value},
        port=port,
        ready_path="/ping",
        predict_path="/invocations",
        body=mlflow_body("mlflow-sklearn", form),
        answers=lambda answer: (answer["predictions"], None),
        reference="sklearn",
        notes=(
            f"-w {workers}",
            f"body form {form}",
            "pyfunc predict (labels only)",
            "column signature enforced",
            f"{access_name}={access_value}",
        ),
    )


def mlflow_onnx_peer(
    models: MlflowModels, port: int, workers: int, tmp: Path, form: str = "auto", access_log: bool = True
) -> Peer:
    # The onnx pyfunc turns a DataFrame into 1-D columns ([N]), which a graph with [N, 1] inputs refuses, and
    # cannot put a [N, 2] probability output into a DataFrame. The logged tensor signature avoids both: the
    # scoring server turns `inputs` ({feature: [[v], ...]}) and both dataframe forms into a dict of [N, 1]
    # arrays typed per feature, which the flavor feeds as they are and answers with a dict of outputs.
    access_name, access_value = _uvicorn_access_log(access_log)
    return Peer(
        name="mlflow-onnx",
        description="mlflow models serve, onnx flavor",
        workers=workers,
        command=_mlflow_command(models.onnx_uri, port, workers),
        env={**quiet_env(tmp), "MLFLOW_TRACKING_URI": models.tracking_uri, access_name: access_value},
        port=port,
        ready_path="/ping",
        predict_path="/invocations",
        body=mlflow_body("mlflow-onnx", form),
        answers=lambda answer: (answer["predictions"][LABEL], answer["predictions"][PROBABILITIES]),
        notes=(
            f"-w {workers}",
            f"body form {form}",
            "tensor signature, ORT 1 thread like slipway",
            f"{access_name}={access_value}",
        ),
    )


# --- the bare ASGI limit ---------------------------------------------------------------------------------


def asgi_limit_peer(model_dir: Path, port: int, workers: int, tmp: Path, form: str = "auto") -> Peer:
    """The bare ASGI app, sent the body slipway gets (`form`: slipway_body)."""
    from bench.asgi_floor import MODEL_DIR_ENV

    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.asgi_floor:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--lifespan",
        "on",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    return Peer(
        name=f"asgi-limit-{workers}w",
        description="bare ASGI app (bench/asgi_floor.py), uvicorn + httptools + uvloop",
        workers=workers,
        command=command,
        env={**quiet_env(tmp), MODEL_DIR_ENV: str(model_dir)},
        port=port,
        ready_path="/readyz",
        predict_path="/predict",
        body=slipway_body(form),
        answers=lambda answer: (answer["predictions"], answer["probabilities"]),
        notes=(f"--workers {workers}", "serving.predictor.Predictor, orjson, no validation", f"body form {form}"),
    )


def check_answers(
    peer: Peer,
    answer: Any,
    labels: np.ndarray,
    probabilities: np.ndarray | None,
) -> str | None:
    """None when the peer's labels equal the reference (and probabilities agree within 1e-6), else why not."""
    try:
        got_labels, got_probabilities = peer.answers(answer)
    except (KeyError, TypeError) as exc:
        return f"unexpected answer shape ({exc!r}): {json.dumps(answer)[:300]}"
    if [int(v) for v in got_labels] != [int(v) for v in labels.tolist()]:
        return f"labels differ from the reference: {got_labels[:10]} vs {labels.tolist()[:10]}"
    if got_probabilities is not None and probabilities is not None:
        gap = float(np.max(np.abs(np.asarray(got_probabilities, dtype=np.float64) - probabilities)))
        if gap > 1e-6:
            return f"probabilities differ from the reference by up to {gap:.2e}"
    return None
