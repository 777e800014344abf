"""Describe a model's inputs and convert the fitted model to ONNX with one input per feature and stable outputs.

The feed convention (serving/features.py) gives the graph one [N, 1] input per feature: double (float64) for
numbers, strings for categories. The graph keeps float64 wherever the native model computes in float64 and
rounds to float32 only where it does (see _keep_numbers_in_double), so it predicts what the native model
predicts on the rows clients send. Outputs are float32 and renamed to `label` + `probabilities` (classifiers) or
`prediction` (regressors) whatever the converter called them, so serving and parity never guess names.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
from onnx import TensorProto, helper, numpy_helper
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
_TREE_OPS = frozenset({"TreeEnsembleClassifier", "TreeEnsembleRegressor"})
# From this ai.onnx.ml opset the tree ensembles take float64 thresholds and leaf values (`*_as_tensor`).
_DOUBLE_TREES_ML_OPSET = 3


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
    _keep_numbers_in_double(proto, schema, model, ml_opset)
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
    """Replace the matrix input by one input per feature, concatenated in the schema's order (declared float, as
    the converter saw them, until _keep_numbers_in_double makes them double)."""
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


def _keep_numbers_in_double(proto: onnx.ModelProto, schema: ModelSchema, model: Any, ml_opset: int) -> None:
    """Make the numeric inputs tensor(double) and round to float32 only where the native model does.

    The converters built the graph for float inputs. Each numeric input first gets a Cast to float in front of
    the nodes that read it, so every converter sees the type it was built for, rounded once from the client's
    double: what scikit-learn's DecisionTree/RandomForest/ExtraTrees/GradientBoosting and XGBoost do to X
    themselves. Then the rounding the native model does not do is removed:
    - a Concat of such casts becomes one Cast of the Concat of the doubles;
    - a Cast to double of a Cast to float of a double becomes an Identity of the double, so a StandardScaler
      (converted in float64 by _convert_standard_scaler_in_double) scales the values the client sent;
    - tree ensembles get float64 thresholds and leaf values where the native model has them (_trees_in_double).
    """
    graph = proto.graph
    numeric = {f.name for f in schema.features if f.dtype != "string"}
    added = 0
    for value in list(graph.input):
        if value.name in numeric:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
            as_float = _unique_name(graph, f"{value.name}_float")
            _rename_tensor_reads(graph, value.name, as_float)
            graph.node.insert(added, _cast(value.name, as_float, TensorProto.FLOAT))
            added += 1
    types = _tensor_types(proto)
    rounded = {  # float tensor -> the double it is a Cast of
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Cast" and _cast_to(n) == TensorProto.FLOAT and types.get(n.input[0]) == TensorProto.DOUBLE
    }
    _hoist_rounding_through_concat(graph, rounded)
    for node in graph.node:
        if node.op_type == "Cast" and _cast_to(node) == TensorProto.DOUBLE and node.input[0] in rounded:
            node.op_type = "Identity"
            node.input[0] = rounded[node.input[0]]
            del node.attribute[:]
    _trees_in_double(proto, model, rounded, ml_opset)
    _remove_unread_nodes(graph)


def _hoist_rounding_through_concat(graph: onnx.GraphProto, rounded: dict[str, str]) -> None:
    """Concat(Cast(a), Cast(b)...) -> Cast(Concat(a, b...)) when every input is a rounded double: one cast, and
    a double Concat that later steps can read instead."""
    position = 0
    while position < len(graph.node):
        node = graph.node[position]
        position += 1
        if node.op_type != "Concat" or not all(name in rounded for name in node.input):
            continue
        output = node.output[0]
        doubles = _unique_name(graph, f"{output}_double")
        node.input[:] = [rounded[name] for name in node.input]
        node.output[0] = doubles
        graph.node.insert(position, _cast(doubles, output, TensorProto.FLOAT))
        rounded[output] = doubles
        position += 1


def _trees_in_double(proto: onnx.ModelProto, model: Any, rounded: dict[str, str], ml_opset: int) -> None:
    """Give tree ensembles float64 thresholds and leaf values, and the double input, where the native model has them.

    Measured on the diabetes data behind a StandardScaler (max |onnx - native| over all rows):
    - HistGradientBoosting and LightGBM compare float64 X with float64 thresholds; the converters write float32
      thresholds behind a Cast to float: 1.89 (HistGradientBoostingRegressor) and 1.69 (LGBMRegressor) with the
      Cast, 5.39 feeding the double to the float32 thresholds (HistGradientBoosting), 1.4e-5 and 1.5e-5 with
      the double and float64 values.
    - RandomForest/ExtraTrees regressors compare float32 X (so their input stays cast to float) but average
      their trees in float64: float32 leaf values summed in float32 leave 1.2e-4 on values in the hundreds,
      float64 ones 1.5e-5 (the float32 output's own rounding).
    Outputs stay float32, the operators' output type. The float64 attributes (`*_as_tensor`) exist from
    ai.onnx.ml opset 3; below that, or when a node does not match its estimator, the node is left as it is.
    """
    readers = [(step, reader) for _, step in _walk(model) if (reader := _float64_tree_reader(step)) is not None]
    if not readers or ml_opset < _DOUBLE_TREES_ML_OPSET or not _ml_opset_can_be(proto, _DOUBLE_TREES_ML_OPSET):
        return
    graph = proto.graph
    position = 0
    while position < len(graph.node):
        tree = graph.node[position]
        position += 1
        if tree.domain != "ai.onnx.ml" or tree.op_type not in _TREE_OPS:
            continue
        found = next(((r, v) for e, r in readers if (v := r.read(tree, e)) is not None), None)
        if found is None:
            continue
        reader, values = found
        if reader.unrounded_input:
            doubles, nodes = _as_double(graph, tree.input[0], rounded)
        else:
            doubles = _unique_name(graph, f"{tree.input[0]}_double")
            nodes = [_cast(tree.input[0], doubles, TensorProto.DOUBLE)]
        tree.input[0] = doubles
        for name, array in values.items():
            tree.attribute.remove(next(a for a in tree.attribute if a.name == name))
            tree.attribute.append(helper.make_attribute(f"{name}_as_tensor", numpy_helper.from_array(array)))
        for offset, node in enumerate(nodes):
            graph.node.insert(position - 1 + offset, node)
        position += len(nodes)
        _raise_ml_opset(proto, _DOUBLE_TREES_ML_OPSET)


@dataclass(frozen=True)
class _TreeReader:
    """Reads an estimator's float64 tree values in the order of a converted tree node's float32 attributes
    (None when the node is not that estimator's), and says whether the estimator compares unrounded float64 X."""

    read: Callable[[onnx.NodeProto, Any], dict[str, np.ndarray] | None]
    unrounded_input: bool


def _float64_tree_reader(estimator: Any) -> _TreeReader | None:
    """The reader for the tree families _trees_in_double rewrites; None for the others (XGBoost is float32)."""
    from sklearn.ensemble import (
        ExtraTreesRegressor,
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestRegressor,
    )

    if isinstance(estimator, HistGradientBoostingClassifier | HistGradientBoostingRegressor):
        return _TreeReader(_hist_gradient_boosting_values, unrounded_input=True)
    if isinstance(estimator, RandomForestRegressor | ExtraTreesRegressor):
        return _TreeReader(_forest_regressor_values, unrounded_input=False)
    if type(estimator).__module__.startswith("lightgbm") and hasattr(estimator, "booster_"):
        return _TreeReader(_lightgbm_values, unrounded_input=True)
    return None


def _hist_gradient_boosting_values(tree: onnx.NodeProto, estimator: Any) -> dict[str, np.ndarray] | None:
    """A HistGradientBoosting model's float64 thresholds, leaf values and baseline (skl2onnx numbers the nodes
    of tree `iteration * n_trees_per_iteration + k` as scikit-learn's predictor does)."""
    attributes = _attributes(tree)
    per_iteration, predictors = estimator.n_trees_per_iteration_, estimator._predictors
    leaves = _leaf_prefix(tree)

    def node(tree_id: int, node_id: int) -> Any:
        iteration, k = divmod(tree_id, per_iteration)
        return predictors[iteration][k].nodes[node_id]

    try:
        splits = [node(t, n) for t, n in zip(attributes["nodes_treeids"], attributes["nodes_nodeids"], strict=True)]
        leaf_values = [
            node(t, n)["value"]
            for t, n in zip(attributes[f"{leaves}_treeids"], attributes[f"{leaves}_nodeids"], strict=True)
        ]
    except (IndexError, KeyError, ValueError):
        return None
    features = [0 if split["is_leaf"] else int(split["feature_idx"]) for split in splits]
    if features != list(attributes["nodes_featureids"]):
        return None
    values = {
        "nodes_values": np.array([0.0 if s["is_leaf"] else s["num_threshold"] for s in splits], dtype=np.float64),
        f"{leaves}_weights": np.array(leaf_values, dtype=np.float64),
    }
    if "base_values" in attributes:
        values["base_values"] = np.asarray(estimator._baseline_prediction, dtype=np.float64).ravel()
    return values if _rounds_to(attributes, values) else None


def _forest_regressor_values(tree: onnx.NodeProto, estimator: Any) -> dict[str, np.ndarray] | None:
    """A RandomForest/ExtraTrees regressor's float64 thresholds and leaf values (value / n_trees, as skl2onnx
    weighs them); skl2onnx numbers each tree's nodes as scikit-learn does.

    skl2onnx moves a float32 threshold one step down where needed so that float32 x <= it exactly when float32 x
    <= the float64 threshold; compared with the float64 threshold itself, that adjustment is not needed.
    """
    if tree.op_type != "TreeEnsembleRegressor":
        return None
    attributes = _attributes(tree)
    trees = [e.tree_ for e in estimator.estimators_]
    weight = 1.0 / len(trees)
    try:
        nodes = [(trees[t], n) for t, n in zip(attributes["nodes_treeids"], attributes["nodes_nodeids"], strict=True)]
        splits = [(t.threshold[n], int(t.feature[n])) if t.children_left[n] != -1 else (0.0, 0) for t, n in nodes]
        leaf_values = [
            trees[t].value[n].ravel()[target] * weight
            for t, n, target in zip(
                attributes["target_treeids"], attributes["target_nodeids"], attributes["target_ids"], strict=True
            )
        ]
    except (IndexError, KeyError, ValueError):
        return None
    thresholds = np.array([threshold for threshold, _ in splits], dtype=np.float64)
    nearest = thresholds.astype(np.float32)
    written = np.asarray(attributes["nodes_values"], dtype=np.float32)
    adjusted = (written == nearest) | (written == np.nextafter(nearest, np.float32(-np.inf)))
    if [feature for _, feature in splits] != list(attributes["nodes_featureids"]) or not adjusted.all():
        return None
    values = {"nodes_values": thresholds, "target_weights": np.array(leaf_values, dtype=np.float64)}
    return values if _rounds_to(attributes, {"target_weights": values["target_weights"]}) else None


def _lightgbm_values(tree: onnx.NodeProto, estimator: Any) -> dict[str, np.ndarray] | None:
    """A LightGBM model's float64 thresholds and leaf values, found by walking each dumped tree alongside the
    converted one from its root (left child = true branch), since onnxmltools numbers the nodes its own way."""
    attributes = _attributes(tree)
    leaves = _leaf_prefix(tree)
    index = {key: i for i, key in enumerate(zip(attributes["nodes_treeids"], attributes["nodes_nodeids"], strict=True))}
    modes = [m.decode() if isinstance(m, bytes) else m for m in attributes["nodes_modes"]]
    thresholds = np.zeros(len(index), dtype=np.float64)
    leaf_values: dict[tuple[int, int], float] = {}
    visited = 0
    try:
        for tree_id, info in enumerate(estimator.booster_.dump_model()["tree_info"]):
            pending = [(0, info["tree_structure"])]
            while pending:
                node_id, native = pending.pop()
                i = index[(tree_id, node_id)]
                visited += 1
                if "left_child" not in native:
                    if modes[i] != "LEAF":
                        return None
                    leaf_values[(tree_id, node_id)] = float(native["leaf_value"])
                    continue
                if (native["decision_type"], modes[i]) != ("<=", "BRANCH_LEQ"):
                    return None  # categorical splits are rewritten by onnxmltools; leave them as converted
                if attributes["nodes_featureids"][i] != native["split_feature"]:
                    return None
                thresholds[i] = float(native["threshold"])
                pending.append((attributes["nodes_truenodeids"][i], native["left_child"]))
                pending.append((attributes["nodes_falsenodeids"][i], native["right_child"]))
        weights = [
            leaf_values[key]
            for key in zip(attributes[f"{leaves}_treeids"], attributes[f"{leaves}_nodeids"], strict=True)
        ]
    except (KeyError, ValueError, TypeError):
        return None
    if visited != len(index):
        return None
    values = {"nodes_values": thresholds, f"{leaves}_weights": np.array(weights, dtype=np.float64)}
    return values if _rounds_to(attributes, values) else None


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _leaf_prefix(tree: onnx.NodeProto) -> str:
    return "class" if tree.op_type == "TreeEnsembleClassifier" else "target"


def _rounds_to(attributes: dict[str, Any], values: dict[str, np.ndarray]) -> bool:
    """True when each float32 attribute skl2onnx wrote is the rounding of the float64 values found for it."""
    for name, array in values.items():
        written = np.asarray(attributes[name], dtype=np.float32)
        if written.shape != array.shape or not np.array_equal(written, array.astype(np.float32)):
            return False
    return True


def _as_double(graph: onnx.GraphProto, name: str, rounded: dict[str, str]) -> tuple[str, list[onnx.NodeProto]]:
    """A double tensor with the values of float tensor `name`, unrounded where they were rounded from doubles,
    and the nodes that compute it (to be inserted before its reader)."""
    if name in rounded:
        return rounded[name], []
    producer = next((n for n in graph.node if name in n.output), None)
    result = _unique_name(graph, f"{name}_double")
    if producer is None or producer.op_type != "Concat":
        return result, [_cast(name, result, TensorProto.DOUBLE)]
    nodes, parts, casted = [], [], {}
    for part in producer.input:
        if part not in rounded and part not in casted:
            casted[part] = _unique_name(graph, f"{part}_double")
            nodes.append(_cast(part, casted[part], TensorProto.DOUBLE))
        parts.append(rounded.get(part) or casted[part])
    concat = helper.make_node("Concat", parts, [result], name=f"slipway_concat_{result}")
    concat.attribute.extend(producer.attribute)
    return result, [*nodes, concat]


def _ml_opset_can_be(proto: onnx.ModelProto, version: int) -> bool:
    """True if the ai.onnx.ml import is at least `version` or can be raised to it without changing the definition
    of any of its operators but the tree ensembles (whose version 3 only adds the float64 attributes)."""
    current = min((o.version for o in proto.opset_import if o.domain == "ai.onnx.ml"), default=version)
    return current >= version or all(
        onnx.defs.get_schema(n.op_type, current, n.domain).since_version
        == onnx.defs.get_schema(n.op_type, version, n.domain).since_version
        for n in proto.graph.node
        if n.domain == "ai.onnx.ml" and n.op_type not in _TREE_OPS
    )


def _raise_ml_opset(proto: onnx.ModelProto, version: int) -> None:
    for entry in proto.opset_import:
        if entry.domain == "ai.onnx.ml":
            entry.version = max(entry.version, version)


def _tensor_types(proto: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor whose type ONNX shape inference can tell."""
    graph = onnx.shape_inference.infer_shapes(proto).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def _remove_unread_nodes(graph: onnx.GraphProto) -> None:
    """Drop nodes none of whose outputs is read (rewrites leave their old casts and concats behind)."""
    while True:
        read = _tensor_reads(graph)
        unread = [n for n in graph.node if not any(name in read for name in n.output)]
        if not unread:
            return
        for node in unread:
            graph.node.remove(node)


def _cast(source: str, target: str, to: int) -> onnx.NodeProto:
    """A Cast node named after its output (unique, as tensor names are)."""
    return helper.make_node("Cast", [source], [target], to=to, name=f"slipway_cast_{target}")


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _tensor_reads(graph: onnx.GraphProto) -> set[str]:
    """Names of the tensors some node (or subgraph) reads, or the graph returns."""
    read = {o.name for o in graph.output}
    for node in graph.node:
        read.update(node.input)
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                read |= _tensor_reads(subgraph)
    return read


def _rename_tensor_reads(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Make every node (and subgraph) that reads `old` read `new` instead; its producer or declaration stays."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                _rename_tensor_reads(subgraph, old, new)


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


# --- the categories a model encodes -------------------------------------------------------------------------

# Nodes that pass one column of a [N, 1] string input through unchanged (a column pick of a one-column tensor
# is that column): the walk from an input to its encoder follows their first input to their first output.
_STRING_PASS_THROUGH = frozenset(
    {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Gather", "ArrayFeatureExtractor"}
)


@dataclass(frozen=True)
class EncodedCategories:
    """The values of a string input the model's encoders know, in the first encoder's order, and whether the
    model also encodes a value outside them (OneHotEncoder zeros=1, LabelEncoder's default) or fails on it."""

    values: tuple[str, ...]
    encodes_unknown: bool


def encoded_categories(proto: onnx.ModelProto) -> dict[str, EncodedCategories]:
    """String inputs that reach only OneHotEncoder/LabelEncoder nodes (through column picks and reshapes), with
    the categories every one of those encoders knows. An input read by anything else (a Concat with other
    columns, a tokenizer, a subgraph) is left out: its allowed values cannot be read off the graph."""
    graph = proto.graph
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in dict.fromkeys(node.input):
            readers.setdefault(name, []).append(node)
    in_subgraphs: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                in_subgraphs |= _tensor_reads(subgraph)
    found: dict[str, EncodedCategories] = {}
    for graph_input in graph.input:
        if graph_input.type.tensor_type.elem_type != TensorProto.STRING or graph_input.name in in_subgraphs:
            continue
        encoders = _encoders_of(graph_input.name, readers, in_subgraphs)
        if encoders:
            found[graph_input.name] = _common_categories(encoders)
    return found


def _encoders_of(
    name: str, readers: dict[str, list[onnx.NodeProto]], in_subgraphs: set[str]
) -> list[tuple[list[str], bool]] | None:
    """(categories, encodes_unknown) of every encoder `name` reaches, or None if it reaches anything else."""
    encoders: list[tuple[list[str], bool]] = []
    pending, seen = [name], {name}
    while pending:
        tensor = pending.pop()
        for node in readers.get(tensor, ()):
            attributes = _attributes(node)
            if node.op_type == "OneHotEncoder" and attributes.get("cats_strings"):
                encoders.append(([v.decode() for v in attributes["cats_strings"]], attributes.get("zeros", 1) == 1))
            elif node.op_type == "LabelEncoder" and attributes.get("keys_strings"):
                # An unknown key maps to the default value: encoded, as no known category.
                encoders.append(([v.decode() for v in attributes["keys_strings"]], True))
            elif node.op_type in _STRING_PASS_THROUGH and node.input[0] == tensor and tensor not in node.input[1:]:
                output = node.output[0]
                if output in in_subgraphs:
                    return None
                if output not in seen:
                    seen.add(output)
                    pending.append(output)
            else:
                return None
    return encoders or None


def _common_categories(encoders: list[tuple[list[str], bool]]) -> EncodedCategories:
    """The values every encoder knows (a value one of them lacks is unknown to the model), in the first one's order."""
    common = set(encoders[0][0]).intersection(*(set(values) for values, _ in encoders[1:]))
    ordered = tuple(dict.fromkeys(v for v in encoders[0][0] if v in common))
    return EncodedCategories(ordered, all(unknown for _, unknown in encoders))
