"""Describe a model's inputs and convert the fitted model to ONNX with one input per feature and stable outputs.

The feed convention (serving/features.py) gives the graph one [N, 1] input per feature: float32 for numbers,
strings for categories. Outputs are renamed to `label` + `probabilities` (classifiers) or `prediction`
(regressors) whatever the converter called them, so serving and parity never guess names.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
from onnx import TensorProto, helper
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.errors import ConversionUnsupported, DataSourceError
from tasks.types import FeatureSpec, FeatureType, ModelSchema, OnnxModel, Task

LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"
PREDICTION_OUTPUT = "prediction"
SUPPORTED_FAMILIES = (
    "scikit-learn estimators and Pipelines/ColumnTransformers whose steps skl2onnx converts",
    "XGBoost XGBClassifier/XGBRegressor",
    "LightGBM LGBMClassifier/LGBMRegressor",
)
# Name of the internal [N, n_features] tensor for models that take one matrix rather than named columns.
_MATRIX = "slipway_feature_matrix"


def infer_schema(frame: pd.DataFrame, target: str, task: Task, classes: Sequence[Any] | None = None) -> ModelSchema:
    """Every column but `target` as a typed feature (its ONNX input), plus the task and the class labels."""
    if target not in frame.columns:
        raise DataSourceError(f"target column {target!r} not in data columns {list(frame.columns)}")
    names = [c for c in frame.columns if c != target]
    if not names:
        raise DataSourceError(f"the data has no feature columns besides the target {target!r}")
    for name in names:
        if not isinstance(name, str):
            raise DataSourceError(f"column name {name!r} is not a string; ONNX inputs are named after columns")
    features = tuple(FeatureSpec(name=name, dtype=feature_type(frame[name].dtype, name)) for name in names)
    return ModelSchema(task=task, features=features, target=target, classes=_classes(frame[target], task, classes))


def feature_type(dtype: Any, column: str = "?") -> FeatureType:
    """The feed type of a pandas/numpy dtype: bool, int, float, or string for object/string/category."""
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_object_dtype(dtype):
        return "string"
    if pd.api.types.is_string_dtype(dtype):
        return "string"
    raise DataSourceError(f"column {column!r} has dtype {dtype}, which has no ONNX feed type (bool/int/float/string)")


def _classes(target: pd.Series, task: Task, classes: Sequence[Any] | None) -> tuple[str | int | float, ...] | None:
    if task == "regression":
        return None
    values = list(classes) if classes is not None else sorted(target.dropna().unique().tolist())
    return tuple(v.item() if isinstance(v, np.generic) else v for v in values)


def convert_to_onnx(model: Any, schema: ModelSchema, out_path: Path, opset: int, ml_opset: int) -> OnnxModel:
    """Convert a fitted model to an ONNX file that takes the schema's feeds and has stable output names."""
    outputs = (LABEL_OUTPUT, PROBABILITIES_OUTPUT) if schema.task == "classification" else (PREDICTION_OUTPUT,)
    clashes = sorted(set(schema.feature_names) & set(outputs))
    if clashes:
        raise DataSourceError(f"feature column(s) {clashes} have the name of a model output; rename them")
    if schema.task == "classification" and not hasattr(model, "predict_proba"):
        raise ConversionUnsupported(
            _class_name(model), SUPPORTED_FAMILIES, "a classifier must have predict_proba to give probabilities"
        )
    _register_external_converters(model)
    proto = _convert(model, schema, opset, ml_opset)
    _name_outputs(proto, model, outputs)
    _dedupe_opsets(proto)
    helper.set_model_props(
        proto,
        {"slipway.schema": schema.model_dump_json(by_alias=True), "slipway.outputs": json.dumps(list(outputs))},
    )
    onnx.checker.check_model(proto, full_check=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(out_path))
    return OnnxModel(
        path=out_path,
        schema_=schema,
        label_output=outputs[0],
        score_output=outputs[-1],
        opset=_default_opset(proto),
        size_bytes=out_path.stat().st_size,
    )


def _convert(model: Any, schema: ModelSchema, opset: int, ml_opset: int) -> onnx.ModelProto:
    """Run skl2onnx with per-feature inputs (column-aware models) or one matrix input fed by a Concat."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from skl2onnx.common.exceptions import MissingConverter, MissingShapeCalculator
    from sklearn.preprocessing import StandardScaler

    by_column = _takes_named_columns(model)
    if by_column:
        initial_types = [
            (f.name, StringTensorType([None, 1]) if f.dtype == "string" else FloatTensorType([None, 1]))
            for f in schema.features
        ]
    else:
        _check_fitted_columns(model, schema)
        strings = [f.name for f in schema.features if f.dtype == "string"]
        if strings:
            raise ConversionUnsupported(
                _class_name(model),
                SUPPORTED_FAMILIES,
                f"string features {strings} need an encoder: put a ColumnTransformer first in a Pipeline",
            )
        initial_types = [(_MATRIX, FloatTensorType([None, len(schema.features)]))]
    convertible = _without_xgboost_feature_names(model)
    try:
        proto = convert_sklearn(
            convertible,
            initial_types=initial_types,
            target_opset={"": opset, "ai.onnx.ml": ml_opset},
            options=_converter_options(convertible, schema.task),
            # Per call, not global: the default Scaler op computes in float32 with a float32 mean.
            custom_conversion_functions={StandardScaler: _convert_standard_scaler_in_double},
        )
    except (MissingShapeCalculator, MissingConverter) as exc:
        raise _unsupported(model, exc) from exc
    if by_column:
        _restore_dropped_inputs(proto, schema)
    else:
        _feed_matrix_from_columns(proto, schema)
    return proto


def _without_xgboost_feature_names(model: Any) -> Any:
    """A copy whose XGBoost boosters forget their column names: onnxmltools only reads features named f0, f1..."""
    if not any(_is_named_xgboost(step) for _, step in _walk(model)):
        return model
    stripped = copy.deepcopy(model)
    for _, step in _walk(stripped):
        if _is_named_xgboost(step):
            step.get_booster().feature_names = None
    return stripped


def _is_named_xgboost(step: Any) -> bool:
    return type(step).__module__.startswith("xgboost") and bool(getattr(step.get_booster(), "feature_names", None))


def _takes_named_columns(model: Any) -> bool:
    """True when the first stage selects columns by name (a ColumnTransformer), so inputs map one to one."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    entry = model
    while isinstance(entry, Pipeline):
        entry = entry.steps[0][1]
    return isinstance(entry, ColumnTransformer)


def _check_fitted_columns(model: Any, schema: ModelSchema) -> None:
    """A matrix model must have been fitted on the schema's columns in the schema's order (as it is fed)."""
    fitted = getattr(model, "feature_names_in_", None)
    if fitted is not None and [str(c) for c in fitted] != schema.feature_names:
        raise DataSourceError(f"the model was fitted on columns {list(fitted)}, the data has {schema.feature_names}")


def _converter_options(model: Any, task: Task) -> dict[Any, dict[str, Any]]:
    """Classifier outputs as a plain probability tensor (no ZipMap)."""
    return {id(_final_estimator(model)): {"zipmap": False}} if task == "classification" else {}


def _final_estimator(model: Any) -> Any:
    from sklearn.pipeline import Pipeline

    while isinstance(model, Pipeline):
        model = model.steps[-1][1]
    return model


def _convert_standard_scaler_in_double(scope: Any, operator: Any, container: Any) -> None:
    """StandardScaler as Cast(double) -> Sub(mean) -> Div(scale) -> Cast: the same arithmetic as scikit-learn.

    skl2onnx's Scaler op multiplies by 1/scale in float32 with a float32 mean. With grid-valued features
    (bmi to 0.1) a split between two grid values falls on a third one, so one-ulp differences move rows
    across splits (measured: up to 4.4 on the diabetes forest, 0.027 probability on the breast-cancer example).
    """
    from skl2onnx.algebra.onnx_ops import OnnxCast, OnnxDiv, OnnxSub
    from skl2onnx.common.data_types import guess_proto_type
    from skl2onnx.operator_converters.common import concatenate_variables

    scaler = operator.raw_operator
    opv = container.target_opset
    source = (
        concatenate_variables(scope, operator.inputs, container)
        if len(operator.inputs) > 1
        else operator.inputs[0].full_name
    )
    values = OnnxCast(source, to=TensorProto.DOUBLE, op_version=opv)
    if scaler.with_mean and scaler.mean_ is not None:
        values = OnnxSub(values, np.asarray(scaler.mean_, dtype=np.float64), op_version=opv)
    if scaler.with_std and scaler.scale_ is not None:
        values = OnnxDiv(values, np.asarray(scaler.scale_, dtype=np.float64), op_version=opv)
    output = operator.outputs[0]
    OnnxCast(values, to=guess_proto_type(output.type), op_version=opv, output_names=[output.full_name]).add_to(
        scope, container
    )


@functools.cache
def _register_xgboost() -> None:
    """Teach skl2onnx the onnxmltools converters for XGBoost's scikit-learn classes (once per process)."""
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )
    from xgboost import XGBClassifier, XGBRegressor

    update_registered_converter(
        XGBClassifier,
        "XGBoostXGBClassifier",
        calculate_linear_classifier_output_shapes,
        convert_xgboost,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    update_registered_converter(
        XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes, convert_xgboost
    )


@functools.cache
def _register_lightgbm() -> None:
    """Teach skl2onnx the onnxmltools converters for LightGBM's scikit-learn classes (once per process)."""
    from lightgbm import LGBMClassifier, LGBMRegressor
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    update_registered_converter(
        LGBMClassifier,
        "LightGbmLGBMClassifier",
        calculate_linear_classifier_output_shapes,
        convert_lightgbm,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    update_registered_converter(
        LGBMRegressor,
        "LightGbmLGBMRegressor",
        calculate_linear_regressor_output_shapes,
        convert_lightgbm,
        options={"split": None},
    )


def _register_external_converters(model: Any) -> None:
    """Register XGBoost/LightGBM converters only when the model uses them (importing them costs time)."""
    packages = {type(step).__module__.split(".")[0] for _, step in _walk(model)}
    if "xgboost" in packages:
        _register_xgboost()
    if "lightgbm" in packages:
        _register_lightgbm()


def _walk(model: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every estimator inside a model with its step path, e.g. ('pre/num', StandardScaler())."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import FeatureUnion, Pipeline

    yield path or type(model).__name__, model
    if isinstance(model, Pipeline):
        children = [(name, step) for name, step in model.steps]
    elif isinstance(model, ColumnTransformer):
        fitted = getattr(model, "transformers_", model.transformers)
        children = [(name, step) for name, step, _ in fitted]
    elif isinstance(model, FeatureUnion):
        children = list(model.transformer_list)
    else:
        children = []
    for name, step in children:
        if step is not None and not isinstance(step, str):
            yield from _walk(step, f"{path}/{name}" if path else name)


def _unsupported(model: Any, exc: Exception) -> ConversionUnsupported:
    """Name the step skl2onnx could not convert (not just 'Pipeline') and where it sits in the model."""
    found = re.search(r"<class '([\w.]+)'>", str(exc))
    qualified = found.group(1) if found else _class_name(model)
    name = qualified.rsplit(".", 1)[-1]
    paths = [path for path, step in _walk(model) if type(step).__name__ == name]
    where = f"step {paths[0]!r} " if paths else ""
    return ConversionUnsupported(name, SUPPORTED_FAMILIES, f"{where}({qualified}) has no registered ONNX converter")


def _class_name(model: Any) -> str:
    return type(model).__name__


def _feed_matrix_from_columns(proto: onnx.ModelProto, schema: ModelSchema) -> None:
    """Replace the matrix input by one float input per feature, concatenated in the schema's order."""
    graph = proto.graph
    others = [i for i in graph.input if i.name != _MATRIX]
    del graph.input[:]
    graph.input.extend(
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, 1]) for name in schema.feature_names
    )
    graph.input.extend(others)
    graph.node.insert(
        0, helper.make_node("Concat", schema.feature_names, [_MATRIX], axis=1, name="slipway_concat_features")
    )


def _restore_dropped_inputs(proto: onnx.ModelProto, schema: ModelSchema) -> None:
    """Keep an input for every feature even if the model ignores it, so the shared feeds are always accepted."""
    present = {i.name for i in proto.graph.input}
    for feature in schema.features:
        if feature.name not in present:
            elem = TensorProto.STRING if feature.dtype == "string" else TensorProto.FLOAT
            proto.graph.input.append(helper.make_tensor_value_info(feature.name, elem, [None, 1]))


def _name_outputs(proto: onnx.ModelProto, model: Any, names: Sequence[str]) -> None:
    """Rename the graph outputs, in order, to the stable names; any other tensor using a name is moved aside."""
    current = [o.name for o in proto.graph.output]
    if len(current) != len(names):
        raise ConversionUnsupported(
            _class_name(_final_estimator(model)),
            SUPPORTED_FAMILIES,
            f"the converted graph has outputs {current}; expected {len(names)} ({', '.join(names)})",
        )
    for old, new in zip(current, names, strict=True):
        if old == new:
            continue
        if new in _tensor_names(proto.graph):
            _rename_tensor(proto.graph, new, _unique_name(proto.graph, f"{new}_internal"))
        _rename_tensor(proto.graph, old, new)


def _tensor_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {o.name for o in graph.output} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names


def _unique_name(graph: onnx.GraphProto, base: str) -> str:
    taken, candidate, n = _tensor_names(graph), base, 0
    while candidate in taken:
        n += 1
        candidate = f"{base}_{n}"
    return candidate


def _rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename one tensor everywhere in a graph, including subgraphs that refer to it from outer scope."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                _rename_tensor(subgraph, old, new)
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        if value.name == old:
            value.name = new


def _dedupe_opsets(proto: onnx.ModelProto) -> None:
    """onnxmltools may add a second default-domain import; keep the highest version per domain."""
    best: dict[str, int] = {}
    for entry in proto.opset_import:
        best[entry.domain] = max(best.get(entry.domain, 0), entry.version)
    del proto.opset_import[:]
    proto.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in sorted(best.items()))


def _default_opset(proto: onnx.ModelProto) -> int:
    return max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


# Prefect task: the conversion as a step the release flow runs.
to_onnx = task(name="convert", cache_policy=NO_CACHE)(convert_to_onnx)
