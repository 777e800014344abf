"""A training entrypoint whose estimator has no ONNX converter (used by the unsupported-estimator test)."""

from __future__ import annotations

from typing import Any

from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.semi_supervised import LabelSpreading

from examples.breast_cancer import CATEGORICAL, SIZE_BANDS, load_data


def build_model(params: dict[str, Any]) -> Pipeline:
    """The example's preprocessing in front of LabelSpreading, which skl2onnx has no converter for."""
    numeric = [c for c in load_data().columns if c not in (*CATEGORICAL, "malignant")]
    pre = ColumnTransformer(
        [("num", StandardScaler(), numeric), ("cat", OneHotEncoder(categories=[SIZE_BANDS]), CATEGORICAL)]
    )
    return Pipeline([("pre", pre), ("clf", LabelSpreading(kernel="knn", n_neighbors=7))])
