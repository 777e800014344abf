"""The model every peer serves: the shipped breast-cancer example, trained with a fixed seed and converted once.

Parameters, split and opsets come from configs/base.yaml (environment overrides ignored), so the benchmark
measures the model `make demo` releases. The ONNX file is made by slipway's own `convert_to_onnx`, and the
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
LABEL = "label"
PROBABILITIES = "probabilities"


@dataclass(frozen=True)
class BenchModel:
    """The fitted pipeline, its ONNX file and schema, and the holdout rows every peer is sent."""

    estimator: Any  # the fitted scikit-learn Pipeline
    schema: Any  # tasks.types.ModelSchema (imported lazily: tasks pulls in Prefect)
    onnx_path: Path
    rows: pd.DataFrame  # feature columns only, rows the model never saw
    train_rows: int
    params: dict[str, Any]

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


def prepare_model(workdir: Path) -> BenchModel:
    """Train the example with the base config's parameters and seed, and convert it with tasks.convert."""
    from sklearn.model_selection import train_test_split

    from configs.loader import load_config
    from examples.breast_cancer import build_model, load_data
    from tasks.convert import convert_to_onnx, infer_schema

    settings = load_config(env=None, environ={}).settings
    frame = load_data()
    target = settings.data.target
    train, holdout = train_test_split(
        frame, test_size=settings.data.test_size, random_state=settings.data.random_state, stratify=frame[target]
    )
    params = dict(settings.model.params)
    schema = infer_schema(train, target, settings.model.task)
    estimator = build_model(params)
    estimator.fit(train[schema.feature_names], train[target])
    onnx = convert_to_onnx(
        estimator, schema, workdir / "model.onnx", opset=settings.convert.opset, ml_opset=settings.convert.ml_opset
    )
    return BenchModel(
        estimator=estimator,
        schema=schema,
        onnx_path=onnx.path,
        rows=holdout[schema.feature_names].reset_index(drop=True),
        train_rows=len(train),
        params=params,
    )


def reference_predictions(model: BenchModel, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) of in-process ONNX Runtime on the batch every peer gets."""
    from serving.features import feeds_from_columns
    from serving.predictor import open_session

    session = open_session(model.onnx_path)
    labels, probabilities = session.run([LABEL, PROBABILITIES], feeds_from_columns(model.features, model.batch(size)))
    return np.asarray(labels).reshape(-1), np.asarray(probabilities)
