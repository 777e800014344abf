"""Schema inference and ONNX conversion, checked with real ONNX Runtime sessions against the native models.

Parity numbers measured when these tests were written (skl2onnx 1.20, onnxmltools 1.16, ORT 1.31, sklearn 1.7):
- breast-cancer example, release split (holdout): max |p_onnx - p_native| = 9.4e-7, no label flips.
- diabetes example, release split: 7.6e-5 on the float32 feeds the model really receives, but 1.61 against
  native predictions on the unrounded float64 rows: the forest's thresholds sit half a float32 step from
  training values, so rounding an input like bmi=26.9 to float32 changes the path. The native model does
  the same on rounded inputs (test_diabetes_raw_gap_is_the_float32_feed_not_the_conversion).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.semi_supervised import LabelSpreading

from examples import breast_cancer, diabetes
from tasks.convert import convert_to_onnx, infer_schema
from tasks.errors import ConversionUnsupported, DataSourceError
from tasks.optimize import feed_precision_frame, native_predictions
from tasks.predict import measure_parity, open_session, predict_onnx
from tasks.train import split_data
from tasks.types import ModelSchema, OnnxModel, Parity

OPSET, ML_OPSET = 17, 3
FP32_LIMIT = 1e-4
# Regression values (25..346 here) summed over 60 trees in float32: a bound relative to the largest value.
REGRESSION_RELATIVE_LIMIT = 1e-6


def _fit(model: Any, frame: pd.DataFrame, target: str) -> Any:
    return model.fit(frame.drop(columns=[target]), frame[target])


def _parity(model: Any, onnx_model: OnnxModel, frame: pd.DataFrame, limit: float, **native: bool) -> Parity:
    schema = onnx_model.schema_
    expected = native_predictions(model, frame, schema, **native)
    got = predict_onnx(open_session(onnx_model.path), frame, schema, onnx_model.label_output, onnx_model.score_output)
    return measure_parity(expected, got, schema.task, limit, 0.0)


def _convert(model: Any, frame: pd.DataFrame, target: str, task: Any, path: Path) -> OnnxModel:
    schema = infer_schema(frame, target, task, getattr(model, "classes_", None))
    return convert_to_onnx(model, schema, path, OPSET, ML_OPSET)


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


def test_breast_cancer_example_converts_and_matches_native_on_its_holdout(
    cancer_onnx: tuple[Any, OnnxModel], cancer_split: Any
) -> None:
    # Given the shipped HistGradientBoosting pipeline (ColumnTransformer: scaler + one-hot) fitted on the release
    # split, when converted, then the file is a valid graph with one [N, 1] input per feature (string for the
    # category), outputs `label` and `probabilities`, and on the holdout it matches predict_proba within 1e-4.
    model, onnx_model = cancer_onnx
    proto = onnx.load(onnx_model.path)
    onnx.checker.check_model(proto, full_check=True)
    session = open_session(onnx_model.path)
    inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    assert set(inputs) == set(onnx_model.schema_.feature_names)
    assert inputs["size_band"] == ("tensor(string)", [None, 1])
    assert inputs["mean_radius"] == ("tensor(float)", [None, 1])
    assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]
    assert (onnx_model.label_output, onnx_model.score_output) == ("label", "probabilities")
    assert onnx_model.size_bytes == onnx_model.path.stat().st_size > 0
    assert onnx_model.opset == OPSET
    parity = _parity(model, onnx_model, cancer_split[1], FP32_LIMIT)
    assert parity.rows == len(cancer_split[1])
    assert parity.passed, parity
    assert parity.label_flip_rate == 0.0


def test_scaler_is_computed_in_double_like_scikit_learn(diabetes_onnx: tuple[Any, OnnxModel]) -> None:
    # Given a pipeline with a StandardScaler, when converted, then the graph scales in float64 (Cast/Sub/Div)
    # instead of skl2onnx's float32 Scaler op, whose one-ulp differences flip tree splits.
    ops = [
        (n.op_type, {a.name: a.i for a in n.attribute if a.name == "to"})
        for n in onnx.load(diabetes_onnx[1].path).graph.node
    ]
    assert "Scaler" not in {op for op, _ in ops}
    assert ("Cast", {"to": onnx.TensorProto.DOUBLE}) in ops


def test_diabetes_example_matches_native_on_the_float32_feeds(
    diabetes_onnx: tuple[Any, OnnxModel], diabetes_split: Any
) -> None:
    # Given the shipped RandomForestRegressor pipeline, when its ONNX prediction is compared with the native model
    # on the values ONNX actually receives (numbers rounded to float32 by the feed convention),
    # then they agree within float32 summation error (1e-6 of the largest value; measured 7.6e-5 absolute).
    model, onnx_model = diabetes_onnx
    holdout = diabetes_split[1]
    limit = REGRESSION_RELATIVE_LIMIT * float(np.abs(holdout["progression"]).max())
    parity = _parity(model, onnx_model, holdout, limit, at_feed_precision=True)
    assert parity.passed, parity
    assert [o.name for o in open_session(onnx_model.path).get_outputs()] == ["prediction"]
    assert onnx_model.label_output == onnx_model.score_output == "prediction"


def test_diabetes_raw_gap_is_the_float32_feed_not_the_conversion(
    diabetes_onnx: tuple[Any, OnnxModel], diabetes_split: Any
) -> None:
    # Given the same model, when ONNX is compared with native predictions on the unrounded float64 rows,
    # then the gap exceeds 1e-4 (measured 1.61 on 7 of 111 rows), and it is the native model's own change when
    # its inputs are rounded to float32: the loss comes from the float32 feed convention, not from conversion.
    model, onnx_model = diabetes_onnx
    holdout = diabetes_split[1]
    schema = onnx_model.schema_
    raw = _parity(model, onnx_model, holdout, FP32_LIMIT)
    assert not raw.passed and raw.max_abs_diff > 0.1
    native_shift = (
        native_predictions(model, holdout, schema).scores
        - native_predictions(model, feed_precision_frame(holdout, schema), schema).scores
    )
    assert raw.max_abs_diff == pytest.approx(float(np.abs(native_shift).max()), abs=1e-3)


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
    # then every feature is still an input (the shared feeds are accepted) and labels match natively.
    # Compared at feed precision: on raw float64 rows one of the 10 trees takes another path for a row whose
    # value lies on a split within float32 rounding (grid-valued data; measured 0.1 probability, no label flip).
    train, holdout = (f.assign(malignant=f["malignant"].map({0: "benign", 1: "malignant"})) for f in cancer_split)
    pre = ColumnTransformer([("num", StandardScaler(), ["mean_radius", "mean_texture", "worst_area"])])
    model = _fit(
        Pipeline([("pre", pre), ("clf", RandomForestClassifier(n_estimators=10, random_state=0))]), train, "malignant"
    )
    onnx_model = _convert(model, train, "malignant", "classification", tmp_path / "str.onnx")
    assert onnx_model.schema_.classes == ("benign", "malignant")
    assert len(open_session(onnx_model.path).get_inputs()) == len(onnx_model.schema_.features)
    parity = _parity(model, onnx_model, holdout, FP32_LIMIT, at_feed_precision=True)
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
