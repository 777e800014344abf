"""The model descriptor (`slipway.json`) stored next to `model.onnx` in a BentoML model.

Written by the packaging task, read by the service to type its API and to check the model file, so both
sides share this one definition. Imports only pydantic and the standard library.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SPEC_FILE = "slipway.json"
MODEL_FILE = "model.onnx"
SPEC_FORMAT = 1


class ModelIntegrityError(RuntimeError):
    """The stored model does not match its descriptor (hash, inputs or outputs); the service refuses to start."""


class SpecFeature(BaseModel):
    """One model input: its name (also the ONNX input name and the JSON key) and its type."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    dtype: Literal["float", "int", "string", "bool"]
    # String features whose values the model one-hot or label encodes: the values it knows (read off the ONNX
    # graph when the model is packaged), and whether it encodes any other value (as no known category) or fails
    # on it. None: the model takes any string, or the graph does not tell.
    categories: tuple[str, ...] | None = Field(None, min_length=1)
    encodes_unknown: bool = False


class ServingSpec(BaseModel):
    """Everything the service needs to know about the model it serves."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    format: int = SPEC_FORMAT
    model_name: str
    model_version: str
    task: Literal["classification", "regression"]
    features: tuple[SpecFeature, ...] = Field(min_length=1)
    classes: tuple[str | int | float, ...] | None = None
    label_output: str
    score_output: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @property
    def feature_pairs(self) -> list[tuple[str, str]]:
        return [(f.name, f.dtype) for f in self.features]


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_spec(model_dir: Path) -> ServingSpec:
    """Parse `slipway.json` of a stored model folder."""
    path = model_dir / SPEC_FILE
    if not path.is_file():
        raise ModelIntegrityError(f"{path} is missing: this BentoML model was not saved by slipway")
    return ServingSpec.model_validate_json(path.read_text(encoding="utf-8"))


def verify_model_file(model_dir: Path, spec: ServingSpec) -> Path:
    """Path of `model.onnx` after checking its sha256 against the descriptor."""
    path = model_dir / MODEL_FILE
    if not path.is_file():
        raise ModelIntegrityError(f"{path} is missing")
    actual = file_sha256(path)
    if actual != spec.sha256:
        raise ModelIntegrityError(
            f"{path} has sha256 {actual} but {SPEC_FILE} records {spec.sha256}: "
            "the model file was changed or corrupted after it was saved; refusing to serve it"
        )
    return path
