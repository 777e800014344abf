"""The shipped classification example: scikit-learn's bundled breast-cancer data, no download.

A categorical `size_band` column is derived from the tumour area so that the model needs a real
ColumnTransformer (scaling for numeric columns, one-hot for the categorical one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from examples import check_params

CATEGORICAL = ["size_band"]
SIZE_BANDS = ["small", "medium", "large", "very_large"]


def load_data() -> pd.DataFrame:
    """Features with snake_case names, a derived `size_band` category and the `malignant` label."""
    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.rename(columns=lambda c: c.replace(" ", "_"))
    frame["size_band"] = pd.cut(frame["mean_area"], bins=[0, 400, 700, 1000, np.inf], labels=SIZE_BANDS).astype(str)
    # sklearn's target is 1 for benign; the example predicts malignancy.
    frame["malignant"] = (1 - frame.pop("target")).astype(int)
    return frame


def preprocessor() -> ColumnTransformer:
    """Scale the numeric columns and one-hot the size band (unknown bands encode as all zeros)."""
    numeric = [c for c in load_data().columns if c not in (*CATEGORICAL, "malignant")]
    return ColumnTransformer(
        [
            ("num", StandardScaler(), numeric),
            ("cat", OneHotEncoder(handle_unknown="ignore", categories=[SIZE_BANDS]), CATEGORICAL),
        ]
    )


def build_model(params: dict[str, Any]) -> Pipeline:
    """The shipped model: the preprocessing, then a histogram gradient-boosted tree ensemble."""
    check_params(params, ("max_iter", "learning_rate", "max_leaf_nodes", "random_state"))
    clf = HistGradientBoostingClassifier(
        max_iter=int(params.get("max_iter", 120)),
        learning_rate=float(params.get("learning_rate", 0.1)),
        max_leaf_nodes=int(params.get("max_leaf_nodes", 15)),
        random_state=int(params.get("random_state", 0)),
    )
    return Pipeline([("pre", preprocessor()), ("clf", clf)])


def build_mlp_model(params: dict[str, Any]) -> Pipeline:
    """The same preprocessing, then a small multi-layer perceptron (`examples/mlp.yaml`).

    Params: `hidden_units` per layer and `hidden_layers` (the config's params are scalars), `alpha` (L2),
    `max_iter` and `random_state`.
    """
    check_params(params, ("hidden_layers", "hidden_units", "alpha", "max_iter", "random_state"))
    layers = int(params.get("hidden_layers", 1))
    units = int(params.get("hidden_units", 64))
    if layers < 1 or units < 1:
        raise ValueError(f"hidden_layers and hidden_units must be at least 1, got {layers} and {units}")
    clf = MLPClassifier(
        hidden_layer_sizes=(units,) * layers,
        alpha=float(params.get("alpha", 1e-4)),
        max_iter=int(params.get("max_iter", 1000)),
        random_state=int(params.get("random_state", 0)),
    )
    return Pipeline([("pre", preprocessor()), ("clf", clf)])
