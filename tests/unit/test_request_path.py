"""The request path's pieces in-process: records to columns, the model call, uvicorn's access line."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from pydantic import ValidationError

from serving.features import feeds_from_columns, float_feature_names, model_feeds, served_feeds
from serving.guard import skip_uvicorn_access_log
from serving.predictor import Predictor, open_session
from serving.schema import request_columns, request_model
from serving.spec import ServingSpec, file_sha256

FEATURES = (("mean radius", "float"), ("schema", "int"), ("band", "string"), ("flag", "bool"))


def _spec(features: tuple[tuple[str, str], ...], sha256: str = "0" * 64) -> ServingSpec:
    return ServingSpec.model_validate(
        {
            "model_name": "m",
            "model_version": "1",
            "task": "regression",
            "features": [{"name": n, "dtype": d} for n, d in features],
            "label_output": "variable",
            "score_output": "variable",
            "sha256": sha256,
        }
    )


def test_records_become_one_column_per_feature_in_row_order_under_the_json_names() -> None:
    request_type = request_model(_spec(FEATURES), max_rows=10)
    rows = [
        {"mean radius": 1.5, "schema": 3, "band": "a", "flag": True},
        {"mean radius": -2.0, "schema": 4, "band": "b", "flag": False},
        {"mean radius": 0.25, "schema": 5, "band": "c", "flag": True},
    ]
    columns = request_columns(request_type.model_validate({"records": rows}))
    assert list(columns) == [name for name, _ in FEATURES]
    assert {name: list(values) for name, values in columns.items()} == {
        name: [row[name] for row in rows] for name, _ in FEATURES
    }


def test_one_record_of_one_feature_and_the_columns_form_give_the_same_columns() -> None:
    request_type = request_model(_spec((("x", "float"),)), max_rows=10)
    from_records = request_columns(request_type.model_validate({"records": [{"x": 7.0}]}))
    from_columns = request_columns(request_type.model_validate({"columns": {"x": [7.0]}}))
    as_lists = [{k: list(v) for k, v in columns.items()} for columns in (from_records, from_columns)]
    assert as_lists == [{"x": [7.0]}, {"x": [7.0]}]


def test_columns_of_different_lengths_are_refused_naming_the_odd_ones_and_the_usual_length() -> None:
    request_type = request_model(_spec(FEATURES), max_rows=10)
    columns = {"mean radius": [1.0, 2.0], "schema": [1, 2], "band": ["a"], "flag": [True, False]}
    with pytest.raises(ValidationError, match=r"most have 2, these differ: \{'band': 1\}"):
        request_type.model_validate({"columns": columns})
    columns["band"] = ["a", "b"]
    assert request_columns(request_type.model_validate({"columns": columns}))["band"] == ["a", "b"]


def _doubling_model(path: Path) -> Path:
    """y = 2 * x over one double input of shape [rows, 1]."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["variable"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 1])],
        [helper.make_tensor_value_info("variable", TensorProto.DOUBLE, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)
    return path


def test_the_predictor_calls_the_compiled_session_and_onnx_runtime_still_refuses_a_missing_input(
    tmp_path: Path,
) -> None:
    path = _doubling_model(tmp_path / "model.onnx")
    spec = _spec((("x", "float"),), sha256=file_sha256(path))
    predictor = Predictor(open_session(path), spec)
    assert predictor._run.__self__ is predictor.session._sess  # not the wrapper's per-call checks in Python
    result = predictor.predict({"x": (1.0, 2.5, -4.0)})
    assert result.predictions == [2.0, 5.0, -8.0]
    with pytest.raises(Exception, match="x"):  # ORT's own InvalidArgument names the input it lacks
        predictor._run(predictor._outputs, {}, None)
    assert np.array_equal(feeds_from_columns(spec.feature_pairs, {"x": (1.0,)})["x"], [[1.0]])


@pytest.fixture
def access_logger() -> logging.Logger:
    """A stand-in for `uvicorn.access` under a root logger with a handler, as BentoML configures it."""
    root = logging.getLogger("slipway-test-root")
    root.handlers = [logging.NullHandler()]
    root.setLevel(logging.WARNING)
    access = logging.getLogger("slipway-test-root.access")
    access.handlers = []
    access.propagate = True
    access.setLevel(logging.NOTSET)
    return access


def test_uvicorn_stops_building_access_lines_no_handler_prints(access_logger: logging.Logger) -> None:
    assert access_logger.hasHandlers()  # what makes uvicorn format a line per request
    assert skip_uvicorn_access_log(access_logger)
    assert not access_logger.hasHandlers()


def test_an_access_logger_someone_wants_is_left_alone(access_logger: logging.Logger) -> None:
    access_logger.setLevel(logging.INFO)
    assert not skip_uvicorn_access_log(access_logger)
    assert access_logger.propagate
    access_logger.setLevel(logging.NOTSET)
    access_logger.addHandler(logging.NullHandler())
    assert not skip_uvicorn_access_log(access_logger)
    assert access_logger.propagate


def _categorical_spec(categories: tuple[str, ...], encodes_unknown: bool) -> ServingSpec:
    spec = _spec((("x", "float"), ("band", "string")))
    band = spec.features[1].model_copy(update={"categories": categories, "encodes_unknown": encodes_unknown})
    return spec.model_copy(update={"features": (spec.features[0], band)})


@pytest.mark.parametrize("n_categories", [4, 200])
def test_a_category_feature_takes_only_the_values_the_model_knows_in_both_forms(n_categories: int) -> None:
    # Given a feature the model one-hot encodes with 4 values (a Literal) or 200 (a set lookup)
    categories = tuple(f"v{i}" for i in range(n_categories))
    request_type = request_model(_categorical_spec(categories, encodes_unknown=True), max_rows=10)
    # Then a known value is taken in records and in columns
    request_type.model_validate_json('{"records": [{"x": 1.0, "band": "v3"}]}')
    request_type.model_validate_json('{"columns": {"x": [1.0, 2.0], "band": ["v0", "v1"]}}')
    # And an unknown one, or the right letters in another case, is refused naming the field and known values
    for body, where in (
        ('{"records": [{"x": 1.0, "band": "v3"}, {"x": 1.0, "band": "V3"}]}', ("records", 1, "band")),
        ('{"columns": {"x": [1.0, 2.0], "band": ["v0", "nope"]}}', ("columns", "band", 1)),
    ):
        with pytest.raises(ValidationError) as refused:
            request_type.model_validate_json(body)
        (error,) = refused.value.errors(include_input=False)
        assert error["loc"] == where
        assert "'v0'" in error["msg"] and "'v3'" in error["msg"]
        assert ("200 categories" in error["msg"]) == (n_categories == 200)
    # And the JSON schema (the OpenAPI document's) lists the values
    schema = request_type.model_json_schema()
    record = next(d for name, d in schema["$defs"].items() if name.endswith("Record"))
    assert record["properties"]["band"]["enum"] == list(categories)


def test_accepting_unknown_categories_applies_only_where_the_model_encodes_them() -> None:
    # Given SLIPWAY_UNKNOWN_CATEGORIES=accept: a model that encodes unknowns as no category takes any string,
    lenient = request_model(_categorical_spec(("a", "b"), encodes_unknown=True), 10, accept_unknown_categories=True)
    lenient.model_validate_json('{"records": [{"x": 1.0, "band": "zzz"}]}')
    # while one whose encoder fails on an unknown value (ONNX Runtime: "Unknown Category") still refuses it
    strict = request_model(_categorical_spec(("a", "b"), encodes_unknown=False), 10, accept_unknown_categories=True)
    with pytest.raises(ValidationError, match="band"):
        strict.model_validate_json('{"records": [{"x": 1.0, "band": "zzz"}]}')


@pytest.mark.parametrize("sizes", [(1,), (3,), (1, 1, 1), (100, 2, 37), (5, 1), (100,), (100, 32, 64)])
def test_served_feeds_of_requests_equal_model_feeds_of_their_columns_joined(sizes: tuple[int, ...]) -> None:
    # Given validated requests of every feature type (floats, ints up to the largest double, bools, strings;
    # lists and tuples as the two body forms give them), when their feeds are built part by part, then they
    # equal, value and dtype, what model_feeds gives for the columns joined, and the float block holds the rows
    # in request order.
    rng = np.random.default_rng(len(sizes) * 100 + sum(sizes))
    features = [("x", "float"), ("n", "int"), ("plan", "string"), ("y", "float"), ("flag", "bool")]
    float_names = float_feature_names(features)
    parts = []
    for index, rows in enumerate(sizes):
        kind = tuple if index % 2 else list
        parts.append(
            {
                "x": kind(rng.normal(size=rows).tolist()),
                "n": kind([*rng.integers(-5, 5, size=rows - 1).tolist(), 10**300]),
                "plan": kind(rng.choice(["basic", "pro", "été"], size=rows).tolist()),
                "y": kind((rng.normal(size=rows) * 1e6).tolist()),
                "flag": kind((rng.random(size=rows) > 0.5).tolist()),
            }
        )
    joined = {name: [value for part in parts for value in part[name]] for name, _ in features}
    expected = model_feeds(features, joined, float_names)
    got = served_feeds(features, parts, float_names)
    assert got.float_names == expected.float_names == ("x", "y")
    assert got.floats is not None and expected.floats is not None
    np.testing.assert_array_equal(got.floats, expected.floats)
    assert list(got.arrays) == list(expected.arrays)
    for name, array in expected.arrays.items():
        assert got.arrays[name].dtype == array.dtype and got.arrays[name].shape == array.shape == (sum(sizes), 1)
        assert got.arrays[name].tolist() == array.tolist(), name
    assert got.floats[0].tolist() == joined["x"]


def test_served_feeds_refuse_a_request_whose_float_features_differ_in_length() -> None:
    # Given a second request whose float features hold 2 and 3 values (7 in all: a 2 x 3 block would still fill,
    # from the first 6),
    # then the feeds are refused naming the lengths instead of shifting values into other rows
    features = [("x", "float"), ("y", "float")]
    parts = [{"x": [1.0], "y": [2.0]}, {"x": [1.0, 2.0], "y": [3.0, 4.0, 5.0]}]
    with pytest.raises(ValueError, match=r"different lengths: \{'x': 2, 'y': 3\}"):
        served_feeds(features, parts, ("x", "y"))
    # and an int too large for a double is refused as np.array refused it, in a request small enough for
    # np.fromiter and in one whose lists are packed whole
    with pytest.raises(OverflowError):
        served_feeds(features, [{"x": [10**400], "y": [1.0]}], ("x", "y"))
    with pytest.raises(OverflowError):
        served_feeds(features, [{"x": [1.0] * 99 + [10**400], "y": [1.0] * 100}], ("x", "y"))
