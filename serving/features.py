"""The one convention for feeding slipway ONNX models: one input per feature, shape [rows, 1].

Numbers (float, int, bool) go in as float64, categories as strings. float64 because that is what clients
send (JSON numbers are doubles) and what scikit-learn preprocesses in: rounding to float32 before a scaler moves
rows across tree splits that sit on data values. Shared by the release tasks and the served Bento (which ships
only the `serving` package), so it imports nothing of slipway.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from typing import Any

import numpy as np

NUMERIC_TYPES = frozenset({"float", "int", "bool"})


def feed_dtype(dtype: str) -> Any:
    """numpy dtype of the ONNX input for a feature type."""
    return np.float64 if dtype in NUMERIC_TYPES else np.str_


def onnx_input_type(dtype: str) -> str:
    """The ONNX Runtime input type (as `NodeArg.type` spells it) a model must declare for a feature type."""
    return "tensor(double)" if dtype in NUMERIC_TYPES else "tensor(string)"


@dataclass(frozen=True)
class ModelFeeds:
    """A request's feeds, and its float features' values as one block.

    `floats` is a C-contiguous float64 array of shape [len(float_names), rows]: row j holds the values of
    float_names[j], and that feature's feed in `arrays` is a view of it. One conversion of the request's lists
    instead of one per feature (70 against 105 us for 30 features of 100 rows, 12 against 24 us at one row), and
    the inference log copies the block's bytes in one go instead of joining 30 arrays' bytes.
    """

    arrays: dict[str, np.ndarray]
    float_names: tuple[str, ...]
    floats: np.ndarray | None


def float_feature_names(features: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """The features typed float, in their order: the rows of ModelFeeds.floats."""
    return tuple(name for name, dtype in features if dtype == "float")


def model_feeds(
    features: Sequence[tuple[str, str]], columns: Mapping[str, Any], float_names: tuple[str, ...] | None = None
) -> ModelFeeds:
    """ONNX Runtime feeds from column-wise values (a DataFrame or a dict of lists/arrays), in the features' order.
    `float_names`: float_feature_names(features), which a caller feeding request after request computes once."""
    if float_names is None:
        float_names = float_feature_names(features)
    floats = np.array([columns[name] for name in float_names], dtype=np.float64) if float_names else None

    def convert(name: str, dtype: str) -> np.ndarray:
        values = np.asarray(columns[name])
        if dtype in NUMERIC_TYPES:
            return values.astype(np.float64, copy=False).reshape(-1, 1)
        return values.astype(str).astype(object).reshape(-1, 1)

    return _assemble(features, float_names, floats, convert)


def _assemble(
    features: Sequence[tuple[str, str]],
    float_names: tuple[str, ...],
    floats: np.ndarray | None,
    convert: Callable[[str, str], np.ndarray],
) -> ModelFeeds:
    """The feeds in the features' order: each float feature a [rows, 1] view of the block (row j of `floats` is
    float_names[j]), every other feature what `convert(name, dtype)` makes of its values."""
    views: dict[str, np.ndarray] = {}
    if floats is not None:
        if floats.ndim != 2:  # e.g. a feature given one value instead of a list
            raise ValueError(f"float features {list(float_names)} do not hold one value per row each")
        stacked = floats.reshape(len(float_names), -1, 1)
        views = {name: stacked[j] for j, name in enumerate(float_names)}
    arrays = {name: views[name] if dtype == "float" else convert(name, dtype) for name, dtype in features}
    return ModelFeeds(arrays, float_names, floats)


def served_feeds(
    features: Sequence[tuple[str, str]], parts: Sequence[Mapping[str, Sequence[Any]]], float_names: tuple[str, ...]
) -> ModelFeeds:
    """The feeds of requests the service has validated (serving.schema), their rows one part after another: what
    model_feeds gives for their columns joined, without joining the lists first.

    Only for values the request schema accepted: floats are Python floats, ints and bools theirs, strings `str`
    (strict), every feature a list or tuple with one value per row. The float block is filled in one pass,
    feature after feature and within a feature part after part (np.fromiter with the count known), which is the
    block's own order: no list is joined and no array concatenated. np.array over each part's lists (then one
    concatenate) walked the nested lists twice, to find their shape and to convert: this function took 18-26% more
    instructions that way for one and five 100-row requests and eight one-row ones (callgrind, BENCHMARKS.md);
    joining the lists first cost ~40% more again. When every request has _PACK_MIN_ROWS rows or more, each list
    is instead packed whole by struct into the block's bytes (_packed_block): the same doubles, fewer calls. A
    string feature goes straight to an object array; model_feeds' astype(str).astype(object), which any input
    needs, went through a fixed-width unicode array and back (78 against 8 us for 500 values).
    """
    floats = None
    if float_names:
        rows = 0
        shortest = None
        for part in parts:
            lengths = set(map(len, map(part.__getitem__, float_names)))
            if len(lengths) != 1:  # a block must not shift rows silently
                named = {name: len(part[name]) for name in float_names}
                raise ValueError(f"float features of one request have different lengths: {named}")
            length = lengths.pop()
            rows += length
            shortest = length if shortest is None else min(shortest, length)
        if shortest is not None and shortest >= _PACK_MIN_ROWS:
            floats = _packed_block(parts, float_names, rows)
        if floats is None:
            values = chain.from_iterable(part[name] for name in float_names for part in parts)
            floats = np.fromiter(values, np.float64, count=len(float_names) * rows).reshape(len(float_names), rows)

    def convert(name: str, dtype: str) -> np.ndarray:
        values = parts[0][name] if len(parts) == 1 else list(chain.from_iterable(part[name] for part in parts))
        if dtype in NUMERIC_TYPES:
            return np.asarray(values, dtype=np.float64).reshape(-1, 1)
        return np.array(values, dtype=object).reshape(-1, 1)

    return _assemble(features, float_names, floats, convert)


# From this many rows in every request, served_feeds packs each feature's list with struct (C doubles, one
# call a list) instead of np.fromiter's item by item: 26 against 42 us for 30 features of 100 rows, and 160 against
# 206 us for five such requests (best of 7, in process); below ~32 rows the call per list costs more than it saves
# (9 against 4 us at one row).
_PACK_MIN_ROWS = 32


@lru_cache(maxsize=512)
def _packer(count: int) -> Callable[..., bytes]:
    """struct's packer of `count` native doubles (the memory of a float64 array of that length)."""
    return struct.Struct(f"={count}d").pack


def _packed_block(
    parts: Sequence[Mapping[str, Sequence[Any]]], float_names: tuple[str, ...], rows: int
) -> np.ndarray | None:
    """The float block of served_feeds from its parts' lists, each packed in one call, or None when a value is
    not one struct packs as a double (np.fromiter then converts or refuses it as before: struct's error would
    say less). The array is read-only: it is a view of the packed bytes, which nothing writes to."""
    try:
        data = b"".join([_packer(len(part[name]))(*part[name]) for name in float_names for part in parts])
    except struct.error:
        return None
    return np.frombuffer(data, np.float64).reshape(len(float_names), rows)


def feeds_from_columns(features: Sequence[tuple[str, str]], columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """ONNX Runtime feeds from column-wise values (a DataFrame or a dict of lists/arrays)."""
    return model_feeds(features, columns).arrays
