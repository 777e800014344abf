"""The model every peer serves: a shipped breast-cancer example, trained with a fixed seed and converted once.

Two models, chosen by name (BENCH_MODELS): `example`, the model `make demo` releases (configs/base.yaml: a
120-tree gradient-boosted ensemble), and `mlp`, the same data and preprocessing with the MLP of
examples/mlp.yaml (the kind of model the issue's serving figures were measured on, where the model itself
costs little and the request path is what is measured). Parameters, split and opsets come from the config
files (environment overrides ignored). The ONNX file is made by slipway's own `convert_to_onnx`, and the
in-process reference answers by serving.features.feeds_from_columns, so the benchmark follows whatever feed
convention (float64 or float32 numbers) the serving package currently uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MODEL_NAME = "breast-cancer-classifier"
MODEL_VERSION = "bench"
_ROOT = Path(__file__).resolve().parent.parent
# name -> the config overlay over configs/base.yaml that defines it (None: base.yaml alone)
BENCH_MODELS: dict[str, Path | None] = {"example": None, "mlp": _ROOT / "examples" / "mlp.yaml"}
LABEL = "label"
PROBABILITIES = "probabilities"


@dataclass(frozen=True)
class BenchModel:
    """The fitted pipeline, its ONNX file and schema, and the holdout rows every peer is sent."""

    name: str  # a key of BENCH_MODELS
    estimator: Any  # the fitted scikit-learn Pipeline
    schema: Any  # tasks.types.ModelSchema (imported lazily: tasks pulls in Prefect)
    onnx_path: Path
    rows: pd.DataFrame  # feature columns only, rows the model never saw
    train_rows: int
    params: dict[str, Any]
    entrypoint: str

    @property
    def description(self) -> str:
        """What the model is, for the report: its builder and the estimator it ends in."""
        final = self.estimator.steps[-1][1] if hasattr(self.estimator, "steps") else self.estimator
        return f"{self.name}: {self.entrypoint} ({type(final).__name__} in a {type(self.estimator).__name__})"

    @property
    def features(self) -> list[tuple[str, str]]:
        """(name, type) pairs in the schema's order, as feeds_from_columns takes them."""
        return [(f.name, f.dtype) for f in self.schema.features]

    def batch(self, size: int) -> pd.DataFrame:
        """The first `size` holdout rows (repeated if the holdout is shorter)."""
        repeats = -(-size // len(self.rows))
        return pd.concat([self.rows] * repeats, ignore_index=True).head(size)

    def records(self, size: int) -> list[dict[str, Any]]:
        """The batch as JSON-ready records (Python floats and strings)."""
        return [
            {name: value.item() if isinstance(value, np.generic) else value for name, value in row.items()}
            for row in self.batch(size).to_dict(orient="records")
        ]


def prepare_model(workdir: Path, name: str = "example") -> BenchModel:
    """Train the named model with its config's parameters and seed, and convert it with tasks.convert."""
    from sklearn.model_selection import train_test_split

    from configs.loader import load_config
    from tasks.convert import convert_to_onnx, infer_schema
    from tasks.train import import_entrypoint

    if name not in BENCH_MODELS:
        raise ValueError(f"unknown benchmark model {name!r}; choose from {sorted(BENCH_MODELS)}")
    settings = load_config(env=None, overlay=BENCH_MODELS[name], environ={}).settings
    frame = import_entrypoint(str(settings.data.loader))()
    target = settings.data.target
    train, holdout = train_test_split(
        frame, test_size=settings.data.test_size, random_state=settings.data.random_state, stratify=frame[target]
    )
    params = dict(settings.model.params)
    schema = infer_schema(train, target, settings.model.task)
    estimator = import_entrypoint(settings.model.entrypoint)(params)
    estimator.fit(train[schema.feature_names], train[target])
    onnx = convert_to_onnx(
        estimator, schema, workdir / "model.onnx", opset=settings.convert.opset, ml_opset=settings.convert.ml_opset
    )
    return BenchModel(
        name=name,
        estimator=estimator,
        schema=schema,
        onnx_path=onnx.path,
        rows=holdout[schema.feature_names].reset_index(drop=True),
        train_rows=len(train),
        params=params,
        entrypoint=settings.model.entrypoint,
    )


def reference_predictions(model: BenchModel, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) of in-process ONNX Runtime on the batch every peer gets."""
    from serving.features import feeds_from_columns
    from serving.predictor import open_session

    session = open_session(model.onnx_path)
    labels, probabilities = session.run([LABEL, PROBABILITIES], feeds_from_columns(model.features, model.batch(size)))
    return np.asarray(labels).reshape(-1), np.asarray(probabilities)
