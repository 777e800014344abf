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
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

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


def build_model(params: dict[str, Any]) -> Pipeline:
    """Scale numeric columns, one-hot the size band, then a histogram gradient-boosted tree ensemble."""
    numeric = [c for c in load_data().columns if c not in (*CATEGORICAL, "malignant")]
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), numeric),
            ("cat", OneHotEncoder(handle_unknown="ignore", categories=[SIZE_BANDS]), CATEGORICAL),
        ]
    )
    clf = HistGradientBoostingClassifier(
        max_iter=int(params.get("max_iter", 120)),
        learning_rate=float(params.get("learning_rate", 0.1)),
        max_leaf_nodes=int(params.get("max_leaf_nodes", 15)),
        random_state=int(params.get("random_state", 0)),
    )
    return Pipeline([("pre", pre), ("clf", clf)])
