"""Predictions of the native model and of an ONNX file on the same rows, and their parity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd

from serving.features import feeds_from_columns
from tasks.types import ModelSchema, Parity


@dataclass(frozen=True)
class Predictions:
    """labels: class labels (classification) or values (regression); scores: probabilities [N, C] or values [N]."""

    labels: np.ndarray
    scores: np.ndarray


def predict_native(model: Any, frame: pd.DataFrame, schema: ModelSchema) -> Predictions:
    """Run the native (scikit-learn API) model on the feature columns of `frame`."""
    features = frame[schema.feature_names]
    if schema.task == "classification":
        scores = np.asarray(model.predict_proba(features), dtype=np.float64)
        labels = np.asarray(model.predict(features))
        return Predictions(labels=labels, scores=scores)
    values = np.asarray(model.predict(features), dtype=np.float64).reshape(-1)
    return Predictions(labels=values, scores=values)


def open_session(path: Path, intra_op_threads: int = 1) -> ort.InferenceSession:
    """An ORT CPU session with all graph optimizations and a fixed thread count (stable on small machines)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predict_onnx(
    session: ort.InferenceSession,
    frame: pd.DataFrame,
    schema: ModelSchema,
    label_output: str,
    score_output: str,
) -> Predictions:
    """Run an ONNX session on the feature columns of `frame` through the shared feed convention."""
    feeds = feeds_from_columns([(f.name, f.dtype) for f in schema.features], frame)
    labels, scores = session.run([label_output, score_output], feeds)
    if schema.task == "classification":
        return Predictions(labels=np.asarray(labels).reshape(-1), scores=np.asarray(scores, dtype=np.float64))
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    return Predictions(labels=values, scores=values)


def measure_parity(
    native: Predictions, onnx: Predictions, task: str, max_abs_diff: float, max_flip_rate: float
) -> Parity:
    """Max absolute difference of scores and (for classifiers) the share of rows whose label changed."""
    if native.scores.shape != onnx.scores.shape:
        raise ValueError(f"score shapes differ: native {native.scores.shape} vs onnx {onnx.scores.shape}")
    rows = int(native.scores.shape[0])
    diff = float(np.max(np.abs(native.scores - onnx.scores))) if rows else 0.0
    if task == "classification":
        flips = float(np.mean(native.labels.astype(str) != onnx.labels.astype(str))) if rows else 0.0
    else:
        flips = 0.0
    return Parity(
        rows=rows,
        max_abs_diff=diff,
        label_flip_rate=flips,
        max_abs_diff_allowed=max_abs_diff,
        label_flip_rate_allowed=max_flip_rate,
    )
