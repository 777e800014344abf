"""The shipped regression example: scikit-learn's bundled diabetes data (raw scale), no download.

`sex` is kept as a categorical string column so the pipeline one-hot encodes it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes
from sklearn.ensemble import RandomForestRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from examples import check_params

CATEGORICAL = ["sex"]


def load_data() -> pd.DataFrame:
    """Ten baseline variables and `progression`, the disease progression one year later."""
    frame = load_diabetes(as_frame=True, scaled=False).frame
    frame["sex"] = frame["sex"].map({1.0: "a", 2.0: "b"}).astype(str)
    return frame.rename(columns={"target": "progression"})


def build_model(params: dict[str, Any]) -> Pipeline:
    """Scale numeric columns, one-hot `sex`, then a random forest."""
    check_params(params, ("n_estimators", "max_depth", "random_state"))
    numeric = [c for c in load_data().columns if c not in (*CATEGORICAL, "progression")]
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), numeric),
            ("cat", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
        ]
    )
    reg = RandomForestRegressor(
        n_estimators=int(params.get("n_estimators", 60)),
        max_depth=int(params.get("max_depth", 8)),
        random_state=int(params.get("random_state", 0)),
        n_jobs=1,
    )
    return Pipeline([("pre", pre), ("reg", reg)])
