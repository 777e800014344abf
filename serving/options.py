"""Service knobs read from the environment of the serving process (the Bento's only config channel).

SLIPWAY_MODEL_TAG     BentoML model tag to serve when the Bento carries none (serving from source)
SLIPWAY_MAX_BATCH_ROWS  largest batch one request may carry (default 1000, as ServingSettings.max_batch_rows)
SLIPWAY_WORKERS       worker processes; 0 or unset means one per core (as ServingSettings.workers)
SLIPWAY_TIMEOUT_S     request timeout in seconds (default 30)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal


class OptionsError(ValueError):
    """An environment variable of the service has an invalid value; the message names it."""


@dataclass(frozen=True)
class ServiceOptions:
    model_tag: str | None = None
    max_batch_rows: int = 1000
    workers: int | Literal["cpu_count"] = "cpu_count"
    timeout_s: float = 30.0


def _positive(environ: Mapping[str, str], name: str, default: float, kind: type[Any]) -> Any:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise OptionsError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value < 0:
        raise OptionsError(f"{name}={raw!r} must not be negative")
    return value


def options_from_env(environ: Mapping[str, str], arguments: Mapping[str, Any] | None = None) -> ServiceOptions:
    """Service options from the environment; Bento arguments (set at build) win for the model tag."""
    max_rows = _positive(environ, "SLIPWAY_MAX_BATCH_ROWS", 1000, int)
    if max_rows == 0:
        raise OptionsError("SLIPWAY_MAX_BATCH_ROWS must be at least 1")
    workers = _positive(environ, "SLIPWAY_WORKERS", 0, int)
    timeout = _positive(environ, "SLIPWAY_TIMEOUT_S", 30.0, float)
    model_tag = (arguments or {}).get("model_tag") or environ.get("SLIPWAY_MODEL_TAG") or None
    return ServiceOptions(
        model_tag=str(model_tag) if model_tag else None,
        max_batch_rows=max_rows,
        workers=workers or "cpu_count",
        timeout_s=timeout or 30.0,
    )
