"""/predict bodies to columns: msgspec for the bodies the request model accepts, pydantic for the rest.

The pydantic request model (serving.schema.request_model) is the contract: it types the OpenAPI document and the
BentoML API, and its errors are the 400s clients read. Validating with it was the largest single cost of a served
100-row request (30% of a worker with the MLP, py-spy, BENCHMARKS.md). msgspec decodes and checks the same body
into structs generated from the same descriptor in about half the time at 100 rows and a sixth at one row.

msgspec only ever accepts: a body it refuses for any reason, or that fails the two checks it cannot express (one
form, columns of one length), goes to the pydantic model, which gives the 400 exactly as before, or accepts it
where msgspec is stricter (an integer beyond 64 bits). msgspec's types are never looser than the model's: JSON
numbers only (a float feature takes integers, as pydantic's strict float does; never true/false or strings), no
NaN or infinity (msgspec refuses NaN and Infinity tokens as JSON and an overflowing number as out of range),
the same known categories, the same row limits, unknown keys refused. tests/unit/test_decode.py holds the two to
the same verdict and the same values over a corpus of valid and invalid bodies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec

from serving.schema import RequestBase, enforced_categories, request_columns, request_model
from serving.spec import ServingSpec, SpecFeature

# int64: msgspec checks integer bounds only within it; a larger integer the model accepts goes to pydantic.
_INT64 = 2**63
_VALUE_TYPES: dict[str, Any] = {
    "float": float,
    "int": Annotated[int, msgspec.Meta(ge=-_INT64, le=_INT64 - 1)],
    "bool": bool,
    "string": str,
}
_REFUSED = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)


def _value_type(feature: SpecFeature, accept_unknown: bool) -> Any:
    categories = enforced_categories(feature, accept_unknown)
    if categories is None:
        return _VALUE_TYPES[feature.dtype]
    return Literal.__getitem__(categories)


def _struct(name: str, types: Sequence[Any], features: Sequence[SpecFeature]) -> type[msgspec.Struct]:
    """A struct with one field per feature, in the features' order; attribute names are positional so any
    feature name works as the JSON key."""
    fields = [(f"f{i}", value) for i, value in enumerate(types)]
    rename = {f"f{i}": feature.name for i, feature in enumerate(features)}
    return msgspec.defstruct(name, fields, rename=rename, forbid_unknown_fields=True)


class RequestDecoder:
    """Turns a /predict body into columns (feature name -> values), or raises the request model's ValidationError."""

    def __init__(self, spec: ServingSpec, max_rows: int, accept_unknown_categories: bool = False) -> None:
        self.request_type: type[RequestBase] = request_model(spec, max_rows, accept_unknown_categories)
        self.names = tuple(feature.name for feature in spec.features)
        types = [_value_type(feature, accept_unknown_categories) for feature in spec.features]
        rows = msgspec.Meta(min_length=1, max_length=max_rows)
        record = _struct("Record", types, spec.features)
        columns = _struct("Columns", [Annotated[list[value], rows] for value in types], spec.features)  # type: ignore[valid-type]
        body = msgspec.defstruct(
            "PredictBody",
            [
                ("records", Annotated[list[record], rows] | None, None),  # type: ignore[valid-type]
                ("columns", columns | None, None),
            ],
            forbid_unknown_fields=True,
        )
        self._decoder = msgspec.json.Decoder(body)

    def __call__(self, body: bytes) -> dict[str, Sequence[Any]]:
        columns = self.fast(body)
        if columns is not None:
            return columns
        return request_columns(self.request_type.model_validate_json(body))

    def fast(self, body: bytes) -> dict[str, Sequence[Any]] | None:
        """The columns of a body msgspec accepts (records as tuples, columns as lists, as request_columns gives
        them), or None: the request model decides."""
        try:
            decoded: Any = self._decoder.decode(body)
        except _REFUSED:
            return None
        records, columns = decoded.records, decoded.columns
        if records is not None and columns is None:
            astuple = msgspec.structs.astuple
            return dict(zip(self.names, zip(*map(astuple, records), strict=True), strict=True))
        if columns is not None and records is None:
            values = msgspec.structs.astuple(columns)
            if len(set(map(len, values))) == 1:
                return dict(zip(self.names, values, strict=True))
        return None
