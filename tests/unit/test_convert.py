"""Schema inference and ONNX conversion, checked with real ONNX Runtime sessions against the native models.

Parity is always measured on the raw float64 rows, as clients send them and as the feeds pass them on.
Numbers measured when these tests were written (skl2onnx 1.20, onnxmltools 1.16, ORT 1.31, sklearn 1.7,
xgboost 3.2, lightgbm 4.7), max |onnx - native| on the release split's holdout / on all rows:
- breast-cancer example (StandardScaler + HistGradientBoosting): 7.8e-8 / 8.7e-8, no label flips
  (9.4e-7 / 3.5e-4 when numbers were fed as float32).
- diabetes example (StandardScaler + RandomForestRegressor, values 25..346): 1.5e-5 / 1.5e-5
  (1.61 / 3.33 with float32 feeds: a forest threshold sits between two grid values such as bmi 26.9 and 27.0,
  and rounding the input to float32 before scaling moved rows across it).
- XGBRegressor (30 trees, depth 3) behind a StandardScaler on the diabetes split: 6.1e-5 / 7.6e-5 (25.5 with
  float32 feeds). What is left is float32 summation, which XGBoost does itself: with 100 trees of depth 6 it is
  1.5e-4 on the holdout, above the 1e-4 gate.
- LGBMRegressor / HistGradientBoostingRegressor behind the diabetes example's scaler, holdout: 1.3e-5 / 1.2e-5
  (1.69 / 2.22 with float32 feeds; both compare in float64, see tasks.convert._trees_in_double).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import helper, numpy_helper
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.semi_supervised import LabelSpreading

from examples import breast_cancer, diabetes
from tasks.convert import EncodedCategories, convert_to_onnx, encoded_categories, infer_schema
from tasks.errors import ConversionUnsupported, DataSourceError
from tasks.optimize import native_predictions, save_ort_optimized
from tasks.predict import measure_parity, open_session, predict_onnx
from tasks.train import split_data
from tasks.types import ModelSchema, OnnxModel, Parity

OPSET, ML_OPSET = 17, 3
FP32_LIMIT = 1e-4  # the release gate's fp32 bound (configs: gates.parity.max_abs_diff_fp32)


def _fit(model: Any, frame: pd.DataFrame, target: str) -> Any:
    return model.fit(frame.drop(columns=[target]), frame[target])


def _parity(model: Any, onnx_model: OnnxModel, frame: pd.DataFrame, limit: float) -> Parity:
    schema = onnx_model.schema_
    expected = native_predictions(model, frame, schema)
    got = predict_onnx(open_session(onnx_model.path), frame, schema, onnx_model.label_output, onnx_model.score_output)
    return measure_parity(expected, got, schema.task, limit, 0.0)


def _convert(model: Any, frame: pd.DataFrame, target: str, task: Any, path: Path) -> OnnxModel:
    schema = infer_schema(frame, target, task, getattr(model, "classes_", None))
    return convert_to_onnx(model, schema, path, OPSET, ML_OPSET)


def _rounded_to_float32(frame: pd.DataFrame, schema: ModelSchema) -> pd.DataFrame:
    """The rows as the old float32 feeds passed them on: numeric features rounded to float32 and back."""
    numeric = [f.name for f in schema.features if f.dtype != "string"]
    return frame.assign(**{name: frame[name].to_numpy(np.float32).astype(np.float64) for name in numeric})


def _float32_sensitivity(model: Any, frame: pd.DataFrame, schema: ModelSchema) -> float:
    """How much the native model's own outputs move when its numeric inputs are rounded to float32."""
    raw = native_predictions(model, frame, schema).scores
    return float(np.abs(raw - native_predictions(model, _rounded_to_float32(frame, schema), schema).scores).max())


def _tree_node(onnx_model: OnnxModel) -> onnx.NodeProto:
    return next(n for n in onnx.load(onnx_model.path).graph.node if n.op_type.startswith("TreeEnsemble"))


def _tensor_types(proto: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of the graph, from ONNX shape inference."""
    graph = onnx.shape_inference.infer_shapes(proto).graph
    return {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}


class NoConverterClassifier(ClassifierMixin, BaseEstimator):
    """A custom classifier nobody wrote an ONNX converter for."""

    def fit(self, X: Any, y: Any) -> NoConverterClassifier:
        self.classes_ = np.unique(y)
        return self

    def predict(self, X: Any) -> np.ndarray:
        return np.repeat(self.classes_[0], len(X))

    def predict_proba(self, X: Any) -> np.ndarray:
        return np.tile(np.eye(len(self.classes_))[0], (len(X), 1))


@pytest.fixture(scope="module")
def cancer_split() -> tuple[pd.DataFrame, pd.DataFrame]:
    return split_data(breast_cancer.load_data(), "malignant", 0.25, 42, stratify=True)


@pytest.fixture(scope="module")
def diabetes_split() -> tuple[pd.DataFrame, pd.DataFrame]:
    return split_data(diabetes.load_data(), "progression", 0.25, 42, stratify=False)


@pytest.fixture(scope="module")
def cancer_onnx(cancer_split: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, OnnxModel]:
    train, _ = cancer_split
    model = _fit(breast_cancer.build_model({}), train, "malignant")
    return model, _convert(model, train, "malignant", "classification", tmp_path_factory.mktemp("bc") / "m.onnx")


@pytest.fixture(scope="module")
def diabetes_onnx(diabetes_split: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, OnnxModel]:
    train, _ = diabetes_split
    model = _fit(diabetes.build_model({}), train, "progression")
    return model, _convert(model, train, "progression", "regression", tmp_path_factory.mktemp("db") / "m.onnx")


def test_infer_schema_types_each_feature_and_keeps_classes() -> None:
    # Given columns of every supported kind, when the schema is inferred,
    # then each non-target column is a feature with its feed type, and classes are plain Python values.
    frame = pd.DataFrame(
        {
            "f": [0.5, 1.5],
            "i": np.array([1, 2], dtype=np.int32),
            "b": [True, False],
            "o": ["x", "y"],
            "c": pd.Series(["u", "v"], dtype="category"),
            "s": pd.Series(["p", "q"], dtype="string"),
            "y": [0, 1],
        }
    )
    schema = infer_schema(frame, "y", "classification", np.array([0, 1]))
    assert [(f.name, f.dtype) for f in schema.features] == [
        ("f", "float"),
        ("i", "int"),
        ("b", "bool"),
        ("o", "string"),
        ("c", "string"),
        ("s", "string"),
    ]
    assert schema.classes == (0, 1) and all(type(c) is int for c in schema.classes)
    assert infer_schema(frame, "y", "regression").classes is None
    assert infer_schema(frame.assign(y=["b", "a"]), "y", "classification").classes == ("a", "b")


def test_infer_schema_rejects_a_missing_target_and_unfeedable_columns() -> None:
    # Given a frame without the target, or with a datetime column, when inferring, then a DataSourceError names it.
    frame = pd.DataFrame({"x": [1.0], "when": pd.to_datetime(["2024-01-01"]), "y": [1]})
    with pytest.raises(DataSourceError, match="'label'"):
        infer_schema(frame, "label", "classification")
    with pytest.raises(DataSourceError, match="'when'"):
        infer_schema(frame, "y", "classification")


def test_breast_cancer_example_converts_and_matches_native_on_its_raw_rows(
    cancer_onnx: tuple[Any, OnnxModel], cancer_split: Any
) -> None:
    # Given the shipped HistGradientBoosting pipeline (ColumnTransformer: scaler + one-hot) fitted on the release
    # split, when converted, then the file is a valid graph with one [N, 1] input per feature (double for numbers,
    # string for the category) and float32 outputs `label` and `probabilities`, and on the raw holdout rows, and on
    # all rows, it matches predict_proba within 1e-4 with no label flip (measured 7.8e-8 and 8.7e-8).
    model, onnx_model = cancer_onnx
    proto = onnx.load(onnx_model.path)
    onnx.checker.check_model(proto, full_check=True)
    session = open_session(onnx_model.path)
    inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    assert set(inputs) == set(onnx_model.schema_.feature_names)
    assert inputs["size_band"] == ("tensor(string)", [None, 1])
    assert inputs["mean_radius"] == ("tensor(double)", [None, 1])
    assert [(o.name, o.type) for o in session.get_outputs()] == [
        ("label", "tensor(int64)"),
        ("probabilities", "tensor(float)"),
    ]
    assert (onnx_model.label_output, onnx_model.score_output) == ("label", "probabilities")
    assert onnx_model.size_bytes == onnx_model.path.stat().st_size > 0
    assert onnx_model.opset == OPSET
    train, holdout = cancer_split
    parity = _parity(model, onnx_model, holdout, FP32_LIMIT)
    assert parity.rows == len(holdout)
    assert parity.passed and parity.label_flip_rate == 0.0, parity
    everything = _parity(model, onnx_model, pd.concat([train, holdout]), FP32_LIMIT)
    assert everything.passed and everything.label_flip_rate == 0.0, everything


def test_hist_gradient_boosting_compares_doubles_like_scikit_learn(cancer_onnx: tuple[Any, OnnxModel]) -> None:
    # Given the example's HistGradientBoostingClassifier (scikit-learn compares float64 X with float64 thresholds),
    # when converted, then its tree ensemble reads a double tensor and carries float64 thresholds, leaf values and
    # baseline instead of skl2onnx's float32 ones, which needs ai.onnx.ml opset 3.
    model, onnx_model = cancer_onnx
    proto = onnx.load(onnx_model.path)
    tree = _tree_node(onnx_model)
    assert _tensor_types(proto)[tree.input[0]] == onnx.TensorProto.DOUBLE
    attributes = {a.name: a for a in tree.attribute}
    assert {"nodes_values", "class_weights", "base_values"}.isdisjoint(attributes)
    thresholds = numpy_helper.to_array(attributes["nodes_values_as_tensor"].t)
    assert thresholds.dtype == np.float64
    first_split = model.named_steps["clf"]._predictors[0][0].nodes[0]
    assert thresholds[0] == first_split["num_threshold"]
    assert {(o.domain, o.version) for o in proto.opset_import} >= {("ai.onnx.ml", 3)}


def test_scaler_is_computed_in_double_from_the_raw_inputs(diabetes_onnx: tuple[Any, OnnxModel]) -> None:
    # Given a pipeline with a StandardScaler, when converted, then the graph scales in float64 (Sub/Div on doubles)
    # instead of skl2onnx's float32 Scaler op, and the doubles it scales are the inputs themselves: no Cast to
    # float sits between the double inputs and the scaler.
    proto = onnx.load(diabetes_onnx[1].path)
    nodes = list(proto.graph.node)
    assert "Scaler" not in {n.op_type for n in nodes}
    types = _tensor_types(proto)
    numeric = {f.name for f in diabetes_onnx[1].schema_.features if f.dtype != "string"}
    assert {i.name: i.type.tensor_type.elem_type for i in proto.graph.input if i.name in numeric} == dict.fromkeys(
        numeric, onnx.TensorProto.DOUBLE
    )
    subtract = next(n for n in nodes if n.op_type == "Sub")
    assert types[subtract.input[0]] == onnx.TensorProto.DOUBLE
    producers = {out: n for n in nodes for out in n.output}
    upstream, pending = set(), [subtract.input[0]]
    while pending:
        node = producers.get(pending.pop())
        if node is not None:
            upstream.add((node.op_type, next((a.i for a in node.attribute if a.name == "to"), None)))
            pending.extend(node.input)
    assert ("Cast", onnx.TensorProto.FLOAT) not in upstream


def test_diabetes_example_matches_native_on_its_raw_rows(
    diabetes_onnx: tuple[Any, OnnxModel], diabetes_split: Any
) -> None:
    # Given the shipped RandomForestRegressor pipeline fitted on the release split, whose native predictions move by
    # more than 1 when the inputs are rounded to float32 first (grid-valued data: splits sit between grid values),
    # when its ONNX predictions are compared with the native ones on the raw float64 rows, then they agree within
    # the release gate's 1e-4, absolute, on the holdout and on all rows (measured 1.5e-5 on both: the float32
    # output's rounding; float64 leaf values avoid float32 summation of the 60 trees).
    model, onnx_model = diabetes_onnx
    train, holdout = diabetes_split
    assert _float32_sensitivity(model, holdout, onnx_model.schema_) > 1.0
    parity = _parity(model, onnx_model, holdout, FP32_LIMIT)
    assert parity.rows == len(holdout) and parity.passed, parity
    everything = _parity(model, onnx_model, pd.concat([train, holdout]), FP32_LIMIT)
    assert everything.passed, everything
    session = open_session(onnx_model.path)
    assert [(o.name, o.type) for o in session.get_outputs()] == [("prediction", "tensor(float)")]
    assert onnx_model.label_output == onnx_model.score_output == "prediction"
    tree = _tree_node(onnx_model)
    assert _tensor_types(onnx.load(onnx_model.path))[tree.input[0]] == onnx.TensorProto.DOUBLE
    assert {"nodes_values_as_tensor", "target_weights_as_tensor"} <= {a.name for a in tree.attribute}


def test_forest_thresholds_still_see_float32_inputs_like_scikit_learn(diabetes_onnx: tuple[Any, OnnxModel]) -> None:
    # Given the example's RandomForestRegressor (scikit-learn casts X to float32 before comparing), when converted,
    # then the tree ensemble reads the scaled values rounded to float32 (a float tensor cast to double for the
    # float64 thresholds), not the unrounded doubles.
    proto = onnx.load(diabetes_onnx[1].path)
    producers = {out: n for n in proto.graph.node for out in n.output}
    to_double = producers[_tree_node(diabetes_onnx[1]).input[0]]
    assert (to_double.op_type, to_double.attribute[0].i) == ("Cast", onnx.TensorProto.DOUBLE)
    assert _tensor_types(proto)[to_double.input[0]] == onnx.TensorProto.FLOAT


def test_xgboost_classifier_in_a_pipeline_converts_with_parity(cancer_split: Any, tmp_path: Path) -> None:
    # Given XGBoost behind a ColumnTransformer (numbers passed through, one-hot category), when converted
    # through the registered onnxmltools converter, then it matches the native probabilities within 1e-4.
    from xgboost import XGBClassifier

    train, holdout = cancer_split
    numeric = [c for c in train.columns if c not in ("size_band", "malignant")]
    pre = ColumnTransformer(
        [("num", "passthrough", numeric), ("cat", OneHotEncoder(categories=[breast_cancer.SIZE_BANDS]), ["size_band"])]
    )
    model = _fit(
        Pipeline([("pre", pre), ("clf", XGBClassifier(n_estimators=30, max_depth=3, n_jobs=1))]), train, "malignant"
    )
    onnx_model = _convert(model, train, "malignant", "classification", tmp_path / "xgb.onnx")
    parity = _parity(model, onnx_model, holdout, FP32_LIMIT)
    assert parity.passed and parity.label_flip_rate == 0.0, parity


def test_xgboost_regressor_behind_a_scaler_matches_native_on_raw_rows(diabetes_split: Any, tmp_path: Path) -> None:
    # Given XGBoost behind the diabetes example's StandardScaler (native moves by >1 on float32-rounded inputs),
    # when converted, then on the raw holdout it matches within 1e-4 (measured 6.1e-5: XGBoost sums its float32
    # leaves in float32 itself; it compares float32 X, as the converted graph does after scaling in float64).
    from xgboost import XGBRegressor

    train, holdout = diabetes_split
    model = diabetes.build_model({})
    model.steps[-1] = ("reg", XGBRegressor(n_estimators=30, max_depth=3, n_jobs=1))
    model = _fit(model, train, "progression")
    onnx_model = _convert(model, train, "progression", "regression", tmp_path / "xgb.onnx")
    assert _float32_sensitivity(model, holdout, onnx_model.schema_) > 1.0
    parity = _parity(model, onnx_model, holdout, FP32_LIMIT)
    assert parity.passed, parity


@pytest.mark.parametrize("family", ["lightgbm", "hist_gradient_boosting"])
def test_float64_tree_regressors_behind_a_scaler_match_native_on_raw_rows(
    family: str, diabetes_split: Any, tmp_path: Path
) -> None:
    # Given a LightGBM or HistGradientBoosting regressor behind the diabetes example's scaler (both compare float64
    # X with float64 thresholds), when converted, then the raw holdout matches within 1e-4 (measured 1.3e-5 and
    # 1.2e-5; 1.69 and 2.22 with float32 feeds and float32 thresholds).
    from lightgbm import LGBMRegressor
    from sklearn.ensemble import HistGradientBoostingRegressor

    train, holdout = diabetes_split
    regressor = (
        LGBMRegressor(n_estimators=60, n_jobs=1, verbose=-1)
        if family == "lightgbm"
        else HistGradientBoostingRegressor(random_state=0)
    )
    model = diabetes.build_model({})
    model.steps[-1] = ("reg", regressor)
    model = _fit(model, train, "progression")
    onnx_model = _convert(model, train, "progression", "regression", tmp_path / f"{family}.onnx")
    parity = _parity(model, onnx_model, holdout, FP32_LIMIT)
    assert parity.passed, parity
    assert "nodes_values_as_tensor" in {a.name for a in _tree_node(onnx_model).attribute}


def test_below_ml_opset_3_trees_keep_float32_thresholds(diabetes_split: Any, tmp_path: Path) -> None:
    # Given ai.onnx.ml opset 2 (no float64 tree attributes yet), when the example is converted, then the graph is
    # still valid, takes double inputs and keeps the converter's float32 thresholds (parity is then the gate's job).
    train, _ = diabetes_split
    model = _fit(diabetes.build_model({"n_estimators": 5}), train, "progression")
    schema = infer_schema(train, "progression", "regression")
    onnx_model = convert_to_onnx(model, schema, tmp_path / "ml2.onnx", OPSET, 2)
    assert "nodes_values" in {a.name for a in _tree_node(onnx_model).attribute}
    assert {i.type for i in open_session(onnx_model.path).get_inputs()} == {"tensor(double)", "tensor(string)"}


def test_lightgbm_classifier_in_a_pipeline_converts_with_parity(cancer_split: Any, tmp_path: Path) -> None:
    # Given LightGBM behind the example's scaler + one-hot ColumnTransformer, when converted, then parity holds.
    from lightgbm import LGBMClassifier

    train, holdout = cancer_split
    numeric = [c for c in train.columns if c not in ("size_band", "malignant")]
    pre = ColumnTransformer(
        [
            ("num", StandardScaler(), numeric),
            ("cat", OneHotEncoder(categories=[breast_cancer.SIZE_BANDS]), ["size_band"]),
        ]
    )
    clf = LGBMClassifier(n_estimators=30, n_jobs=1, verbose=-1)
    model = _fit(Pipeline([("pre", pre), ("clf", clf)]), train, "malignant")
    onnx_model = _convert(model, train, "malignant", "classification", tmp_path / "lgbm.onnx")
    parity = _parity(model, onnx_model, holdout, FP32_LIMIT)
    assert parity.passed and parity.label_flip_rate == 0.0, parity


def test_bare_estimator_fitted_on_a_frame_gets_one_input_per_feature(cancer_split: Any, tmp_path: Path) -> None:
    # Given an XGBRegressor fitted directly on a DataFrame (its booster remembers the column names, which
    # onnxmltools cannot read), when converted, then the graph takes one input per feature, concatenated
    # in the fitted order, and matches the native predictions.
    from xgboost import XGBRegressor

    train, holdout = (f.drop(columns=["size_band"]) for f in cancer_split)
    model = _fit(XGBRegressor(n_estimators=20, max_depth=3, n_jobs=1), train, "malignant")
    onnx_model = _convert(model, train, "malignant", "regression", tmp_path / "bare.onnx")
    assert [i.name for i in open_session(onnx_model.path).get_inputs()] == onnx_model.schema_.feature_names
    assert model.get_booster().feature_names is not None  # the caller's model is left untouched
    parity = _parity(model, onnx_model, holdout, FP32_LIMIT)
    assert parity.passed, parity


def test_matrix_model_fitted_on_other_columns_is_refused(cancer_split: Any, tmp_path: Path) -> None:
    # Given a model fitted on the columns in another order than the data it is released with,
    # when converting, then a DataSourceError says so instead of building a graph that mixes up features.
    train = cancer_split[0].drop(columns=["size_band"])
    features = [c for c in train.columns if c != "malignant"]
    model = RandomForestClassifier(n_estimators=2).fit(train[features[::-1]], train["malignant"])
    with pytest.raises(DataSourceError, match="fitted on columns"):
        _convert(model, train, "malignant", "classification", tmp_path / "m.onnx")


def test_string_class_labels_come_back_as_strings(cancer_split: Any, tmp_path: Path) -> None:
    # Given a random forest trained on string labels that uses only some columns, when converted,
    # then every feature is still an input (the shared feeds are accepted) and labels and probabilities match
    # natively on the raw rows (measured 1.2e-7; 0.1 with float32 feeds, where one tree took another path).
    train, holdout = (f.assign(malignant=f["malignant"].map({0: "benign", 1: "malignant"})) for f in cancer_split)
    pre = ColumnTransformer([("num", StandardScaler(), ["mean_radius", "mean_texture", "worst_area"])])
    model = _fit(
        Pipeline([("pre", pre), ("clf", RandomForestClassifier(n_estimators=10, random_state=0))]), train, "malignant"
    )
    onnx_model = _convert(model, train, "malignant", "classification", tmp_path / "str.onnx")
    assert onnx_model.schema_.classes == ("benign", "malignant")
    assert len(open_session(onnx_model.path).get_inputs()) == len(onnx_model.schema_.features)
    parity = _parity(model, onnx_model, holdout, FP32_LIMIT)
    assert parity.passed and parity.label_flip_rate == 0.0, parity


@pytest.mark.parametrize(
    ("estimator", "name"),
    [(NoConverterClassifier(), "NoConverterClassifier"), (LabelSpreading(), "LabelSpreading")],
)
def test_estimator_without_converter_is_named_with_what_is_supported(
    estimator: Any, name: str, cancer_split: Any, tmp_path: Path
) -> None:
    # Given a pipeline whose final step has no ONNX converter (a custom class, a scikit-learn class skl2onnx lacks),
    # when converting, then ConversionUnsupported names that class and its step (not "Pipeline"), lists the
    # supported families, and no file is written.
    train, _ = cancer_split
    numeric = [c for c in train.columns if c not in ("size_band", "malignant")]
    model = _fit(
        Pipeline([("pre", ColumnTransformer([("num", StandardScaler(), numeric)])), ("clf", estimator)]),
        train,
        "malignant",
    )
    with pytest.raises(ConversionUnsupported, match=rf"cannot convert {name}.*step 'clf'") as info:
        _convert(model, train, "malignant", "classification", tmp_path / "none.onnx")
    assert info.value.estimator == name
    assert any("XGBoost" in s for s in info.value.supported) and any("LightGBM" in s for s in info.value.supported)
    assert not (tmp_path / "none.onnx").exists()


def test_a_feature_named_like_an_output_is_refused(tmp_path: Path) -> None:
    # Given a feature column called "label", when converting a classifier, then the clash is refused up front
    # (the graph cannot have an input and an output of the same name).
    frame = pd.DataFrame({"label": [0.0, 1.0, 2.0, 3.0], "y": [0, 1, 0, 1]})
    model = RandomForestClassifier(n_estimators=2).fit(frame[["label"]], frame["y"])
    schema: ModelSchema = infer_schema(frame, "y", "classification", model.classes_)
    with pytest.raises(DataSourceError, match="label"):
        convert_to_onnx(model, schema, tmp_path / "m.onnx", OPSET, ML_OPSET)


def test_the_categories_the_example_one_hot_encodes_are_read_off_its_graph_and_survive_optimization(
    cancer_onnx: tuple[Any, OnnxModel], tmp_path: Path
) -> None:
    # Given the example (OneHotEncoder(handle_unknown="ignore", categories=[SIZE_BANDS]) on size_band), when the
    # converted graph and its ORT-optimized copy are read, then size_band takes the bands in the encoder's order
    # and encodes unknown values (zeros=1); no number input is listed.
    _, onnx_model = cancer_onnx
    expected = {"size_band": EncodedCategories(tuple(breast_cancer.SIZE_BANDS), encodes_unknown=True)}
    assert encoded_categories(onnx.load(str(onnx_model.path))) == expected
    optimized = save_ort_optimized(onnx_model.path, tmp_path / "optimized.onnx")
    assert encoded_categories(onnx.load(str(optimized))) == expected


def test_an_encoder_left_at_handle_unknown_error_fails_on_an_unknown_value_and_is_marked_so(
    cancer_split: Any, tmp_path: Path
) -> None:
    # Given scikit-learn's default OneHotEncoder (handle_unknown="error") over two string columns, when converted,
    # then each column lists what it was fitted on and does not encode unknowns: ONNX Runtime fails on one
    # (this is why serving must refuse such a value with a 400 instead of running the model).
    train, _ = cancer_split
    frame = train[["mean_radius", "size_band", "malignant"]].assign(
        shape=np.where(train["mean_smoothness"] > 0.095, "rough", "smooth")
    )
    pre = ColumnTransformer(
        [("num", StandardScaler(), ["mean_radius"]), ("cat", OneHotEncoder(), ["size_band", "shape"])]
    )
    model = _fit(
        Pipeline([("pre", pre), ("clf", RandomForestClassifier(n_estimators=5, random_state=0))]), frame, "malignant"
    )
    onnx_model = _convert(model, frame, "malignant", "classification", tmp_path / "strict.onnx")
    found = encoded_categories(onnx.load(str(onnx_model.path)))
    assert found == {
        "size_band": EncodedCategories(tuple(sorted(frame["size_band"].unique())), encodes_unknown=False),
        "shape": EncodedCategories(("rough", "smooth"), encodes_unknown=False),
    }
    session = open_session(onnx_model.path)
    feeds = {"mean_radius": np.array([[14.0]]), "size_band": np.array([["huge"]], dtype=object)}
    feeds["shape"] = np.array([["rough"]], dtype=object)
    with pytest.raises(Exception, match="Unknown Category"):
        session.run(None, feeds)


def _string_graph(nodes: list[onnx.NodeProto], inputs: list[str]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(name, onnx.TensorProto.STRING, [None, 1]) for name in inputs],
        [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None) for node in nodes[-1:]],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])


def test_categories_are_only_claimed_where_every_reader_is_an_encoder() -> None:
    # Given a string input read by two encoders that know different values (one strict), one reaching an encoder
    # through a reshape, one also read by a string normalizer, and two concatenated,
    # then the first takes the values both know, strictly; the second its encoder's; the others none.
    def one_hot(source: str, output: str, cats: list[str], zeros: int = 1) -> onnx.NodeProto:
        return helper.make_node(
            "OneHotEncoder", [source], [output], domain="ai.onnx.ml", cats_strings=cats, zeros=zeros
        )

    shape = helper.make_tensor("shape", onnx.TensorProto.INT64, [2], [-1, 1])
    nodes = [
        one_hot("a", "a1", ["x", "y", "z"]),
        one_hot("a", "a2", ["z", "y"], zeros=0),
        helper.make_node("Reshape", ["b", "shape"], ["b_flat"]),
        helper.make_node(
            "LabelEncoder", ["b_flat"], ["b1"], domain="ai.onnx.ml", keys_strings=["p", "q"], values_int64s=[0, 1]
        ),
        one_hot("c", "c1", ["u"]),
        helper.make_node("StringNormalizer", ["c"], ["c2"], case_change_action="LOWER"),
        helper.make_node("Concat", ["d", "e"], ["da"], axis=1),
        one_hot("da", "d1", ["x"]),
    ]
    proto = _string_graph(nodes, ["a", "b", "c", "d", "e"])
    proto.graph.initializer.append(shape)
    assert encoded_categories(proto) == {
        "a": EncodedCategories(("y", "z"), encodes_unknown=False),
        "b": EncodedCategories(("p", "q"), encodes_unknown=True),
    }
