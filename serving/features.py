"""The one convention for feeding slipway ONNX models: one input per feature, shape [rows, 1].

Numbers (float, int, bool) go in as float64, categories as strings. float64 because that is what clients
send (JSON numbers are doubles) and what scikit-learn preprocesses in: rounding to float32 before a scaler moves
rows across tree splits that sit on data values. Shared by the release tasks and the served Bento (which ships
only the `serving` package), so it imports nothing of slipway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

NUMERIC_TYPES = frozenset({"float", "int", "bool"})


def feed_dtype(dtype: str) -> Any:
    """numpy dtype of the ONNX input for a feature type."""
    return np.float64 if dtype in NUMERIC_TYPES else np.str_


def onnx_input_type(dtype: str) -> str:
    """The ONNX Runtime input type (as `NodeArg.type` spells it) a model must declare for a feature type."""
    return "tensor(double)" if dtype in NUMERIC_TYPES else "tensor(string)"


def feeds_from_columns(features: Sequence[tuple[str, str]], columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """ONNX Runtime feeds from column-wise values (a DataFrame or a dict of lists/arrays)."""
    feeds: dict[str, np.ndarray] = {}
    for name, dtype in features:
        values = np.asarray(columns[name])
        if dtype in NUMERIC_TYPES:
            feeds[name] = values.astype(np.float64, copy=False).reshape(-1, 1)
        else:
            feeds[name] = values.astype(str).astype(object).reshape(-1, 1)
    return feeds
