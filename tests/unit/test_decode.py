"""serving.decode against the pydantic request model it stands in for: the same verdict and the same columns on
every body, valid or not, and the fast path (msgspec) actually taken for the bodies clients send."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import ValidationError

from serving.decode import RequestDecoder
from serving.schema import request_columns
from serving.spec import ServingSpec

BANDS = ["small", "medium", "large"]
CITIES = [f"city-{i:03d}" for i in range(100)]  # beyond the 64 the request model types as a Literal
MAX_ROWS = 5


def _spec() -> ServingSpec:
    return ServingSpec.model_validate(
        {
            "model_name": "m",
            "model_version": "1",
            "task": "regression",
            "features": [
                {"name": "mean radius", "dtype": "float"},
                {"name": "schema", "dtype": "int"},
                {"name": "flag", "dtype": "bool"},
                {"name": "note", "dtype": "string"},
                {"name": "size_band", "dtype": "string", "categories": BANDS, "encodes_unknown": True},
                {"name": "city", "dtype": "string", "categories": CITIES, "encodes_unknown": False},
            ],
            "label_output": "variable",
            "score_output": "variable",
            "sha256": "0" * 64,
        }
    )


ROW: dict[str, Any] = {
    "mean radius": 1.5,
    "schema": 3,
    "flag": True,
    "note": "é\u2603",
    "size_band": "small",
    "city": "city-099",
}


def _records(*rows: dict[str, Any]) -> bytes:
    return json.dumps({"records": list(rows)}).encode()


def _columns(rows: Sequence[dict[str, Any]], **override: Any) -> bytes:
    columns = {name: [row[name] for row in rows] for name in ROW}
    return json.dumps({"columns": {**columns, **override}}).encode()


def _row(**change: Any) -> dict[str, Any]:
    return {**ROW, **change}


def _without(name: str) -> dict[str, Any]:
    return {key: value for key, value in ROW.items() if key != name}


ROWS = [_row(), _row(**{"mean radius": -0.0, "schema": -7, "flag": False, "note": "", "size_band": "large"})]

# Bodies both must accept, with the values each gives.
VALID: dict[str, bytes] = {
    "one record": _records(ROW),
    "two records": _records(*ROWS),
    "max rows of records": _records(*[ROW] * MAX_ROWS),
    "one row of columns": _columns([ROW]),
    "columns": _columns(ROWS),
    "max rows of columns": _columns([ROW] * MAX_ROWS),
    "integer for a float": _records(_row(**{"mean radius": 2})),
    "large integer for a float": _records(_row(**{"mean radius": 10**300})),
    "exponent float": _records(_row(**{"mean radius": 1.7976931348623157e308})),
    "smallest subnormal": _records(_row(**{"mean radius": 5e-324})),
    "int64 bounds": _records(_row(schema=2**63 - 1), _row(schema=-(2**63))),
    "escaped key and value": b'{"records": [{"mean \\u0072adius": 1.5, "schema": 3, "flag": true,'
    b' "note": "\\ud83d\\ude00", "size_band": "small", "city": "city-000"}]}',
    "whitespace around": b"  \n" + _records(ROW) + b"\n\t ",
    "keys in another order": json.dumps({"records": [dict(reversed(list(ROW.items())))]}).encode(),
    "duplicate key, last wins": b'{"records": [{"mean radius": 1.0, "mean radius": 2.5, "schema": 3, "flag": true,'
    b' "note": "n", "size_band": "small", "city": "city-001"}]}',
    "null columns beside records": json.dumps({"records": [ROW], "columns": None}).encode(),
}

# Bodies the request model accepts and msgspec is stricter on: the model decides, and accepts.
SLOW_VALID: dict[str, bytes] = {
    "integer beyond int64": _records(_row(schema=2**63)),
    # msgspec checks every occurrence of a key, pydantic only the last.
    "duplicate key, the first of the wrong type": b'{"records": [{"mean radius": "x", "mean radius": 2.5, "schema": 3,'
    b' "flag": true, "note": "n", "size_band": "small", "city": "city-001"}]}',
}

INVALID: dict[str, bytes] = {
    "empty body": b"",
    "not json": b"{records",
    "a list": b"[]",
    "empty object": b"{}",
    "both forms": json.dumps({"records": [ROW], "columns": json.loads(_columns([ROW]))["columns"]}).encode(),
    "both null": b'{"records": null, "columns": null}',
    "no rows": _records(),
    "empty columns": _columns([]),
    "too many records": _records(*[ROW] * (MAX_ROWS + 1)),
    "too many column rows": _columns([ROW] * (MAX_ROWS + 1)),
    "columns of unequal length": _columns(ROWS, schema=[1]),
    "missing field": _records(_without("schema")),
    "missing column": json.dumps({"columns": {"mean radius": [1.0]}}).encode(),
    "unknown field": _records(_row(extra=1)),
    "unknown top-level key": json.dumps({"records": [ROW], "extra": 1}).encode(),
    "string for a float": _records(_row(**{"mean radius": "1.5"})),
    "bool for a float": _records(_row(**{"mean radius": True})),
    "null for a float": _records(_row(**{"mean radius": None})),
    "float for an int": _records(_row(schema=2.0)),
    "bool for an int": _records(_row(schema=False)),
    "int for a bool": _records(_row(flag=1)),
    "string for a bool": _records(_row(flag="true")),
    "number for a string": _records(_row(note=3)),
    "unknown band": _records(_row(size_band="enormous")),
    "band in another case": _records(_row(size_band="Small")),
    "unknown city (beyond the literal limit)": _records(_row(city="city-100")),
    "number overflowing a double": b'{"records": [{"mean radius": 1e400, "schema": 3, "flag": true, "note": "n",'
    b' "size_band": "small", "city": "city-000"}]}',
    "NaN token": _records(ROW).replace(b"1.5", b"NaN"),
    "Infinity token": _records(ROW).replace(b"1.5", b"-Infinity"),
    "lone surrogate": _records(ROW).replace(b'"small"', b'"\\ud800"'),
    "invalid utf-8": _records(ROW).replace(b"small", b"sm\xffll"),
    "byte order mark": b"\xef\xbb\xbf" + _records(ROW),
    "trailing characters": _records(ROW) + b"x",
    "row not an object": b'{"records": [[1.5, 3, true, "n", "small", "city-000"]]}',
    "records not a list": json.dumps({"records": ROW}).encode(),
    "column not a list": json.dumps({"columns": {name: value for name, value in ROW.items()}}).encode(),
}


def _verdict(call: Any, body: bytes) -> dict[str, list[tuple[type, Any]]] | str:
    """The columns a body gives (each value with its type, so 2 and 2.0 differ), or 'refused'."""
    try:
        columns = call(body)
    except ValidationError:
        return "refused"
    return {name: [(type(value), value) for value in values] for name, values in columns.items()}


@pytest.fixture(scope="module", params=[False, True], ids=["known-categories", "accept-unknown"])
def decoder(request: pytest.FixtureRequest) -> RequestDecoder:
    return RequestDecoder(_spec(), MAX_ROWS, accept_unknown_categories=request.param)


def _model(decoder: RequestDecoder, body: bytes) -> Any:
    return request_columns(decoder.request_type.model_validate_json(body))


@pytest.mark.parametrize("case", sorted(VALID))
def test_valid_bodies_take_the_fast_path_and_give_the_request_models_columns(decoder: RequestDecoder, case: str):
    body = VALID[case]
    expected = _verdict(lambda b: _model(decoder, b), body)
    assert expected != "refused", "the corpus says valid; the request model must agree"
    assert decoder.fast(body) is not None
    assert _verdict(decoder, body) == expected


@pytest.mark.parametrize("case", sorted(SLOW_VALID))
def test_bodies_msgspec_is_stricter_on_are_decided_by_the_request_model(decoder: RequestDecoder, case: str):
    body = SLOW_VALID[case]
    assert decoder.fast(body) is None
    assert _verdict(decoder, body) == _verdict(lambda b: _model(decoder, b), body) != "refused"


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_bodies_are_refused_with_the_request_models_error(decoder: RequestDecoder, case: str):
    body = INVALID[case]
    expected = _error(lambda b: _model(decoder, b), body)
    if expected is None:
        # With accept_unknown the model encodes an unknown band as none of the known ones: valid there only.
        assert case in ("unknown band", "band in another case") and _accepts_unknown(decoder)
        assert decoder.fast(body) is not None
        return
    assert decoder.fast(body) is None
    assert _error(decoder, body) == expected


def _accepts_unknown(decoder: RequestDecoder) -> bool:
    return decoder.fast(_records(_row(size_band="anything"))) is not None


def _error(call: Any, body: bytes) -> list[dict[str, Any]] | None:
    try:
        call(body)
    except ValidationError as error:
        return error.errors(include_url=False, include_context=False, include_input=False)
    return None


def test_unknown_band_is_taken_only_when_unknown_categories_are_accepted_and_the_city_never() -> None:
    strict = RequestDecoder(_spec(), MAX_ROWS)
    lenient = RequestDecoder(_spec(), MAX_ROWS, accept_unknown_categories=True)
    band = _records(_row(size_band="enormous"))
    city = _records(_row(city="atlantis"))
    assert strict.fast(band) is None and lenient.fast(band) is not None
    # The model fails on an unknown city (encodes_unknown false): refused either way.
    assert strict.fast(city) is None and lenient.fast(city) is None
    with pytest.raises(ValidationError, match="city"):
        lenient(city)
