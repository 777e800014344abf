"""Service knobs read from the environment of the serving process (the Bento's only config channel).

SLIPWAY_MODEL_TAG        BentoML model tag to serve when the Bento carries none (serving from source)
SLIPWAY_MAX_BATCH_ROWS   largest batch one request may carry (default 1000, as ServingSettings.max_batch_rows)
SLIPWAY_WORKERS          worker processes; 0 or unset means one per core (as ServingSettings.workers)
SLIPWAY_TIMEOUT_S        request timeout in seconds (default 30)
SLIPWAY_API_KEYS         API keys, comma-separated (or a JSON list of strings); unset or empty: auth off.
                         When set, every path but the open ones needs `Authorization: Bearer <key>`.
SLIPWAY_AUTH_OPEN_PATHS  comma-separated paths that never need a key (default /healthz,/livez,/readyz,/metrics)
SLIPWAY_MAX_BODY_BYTES   largest request body in bytes (default 1048576 = 1 MiB); larger bodies get 413
SLIPWAY_FAST_PATH        1 (default) answers POST /predict in serving.fastpath; 0 leaves it to the BentoML API
SLIPWAY_ACCESS_LOG       1 (default) keeps BentoML's per-request access log; 0 drops it (faster)
SLIPWAY_INFERENCE_LOG_URL (and _BATCH_ROWS, _FLUSH_S) are read by serving.inference_log.InferenceLog.from_env.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_OPEN_PATHS = ("/healthz", "/livez", "/readyz", "/metrics")
DEFAULT_MAX_BODY_BYTES = 1 << 20


class OptionsError(ValueError):
    """An environment variable of the service has an invalid value; the message names it."""


@dataclass(frozen=True)
class ServiceOptions:
    model_tag: str | None = None
    max_batch_rows: int = 1000
    workers: int | Literal["cpu_count"] = "cpu_count"
    timeout_s: float = 30.0
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # secrets: never in a repr or a log
    open_paths: tuple[str, ...] = DEFAULT_OPEN_PATHS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    fast_path: bool = True
    adaptive_batching: bool = True
    access_log: bool = True
    unknown_categories: Literal["refuse", "accept"] = "refuse"


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


def api_keys_from(raw: str) -> tuple[str, ...]:
    """SLIPWAY_API_KEYS as a tuple of keys: comma-separated, or a JSON list of strings; blanks ignored."""
    raw = raw.strip()
    if raw.startswith("["):
        try:
            keys = json.loads(raw)
        except json.JSONDecodeError:
            keys = None
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            # The value is not echoed: it holds secrets.
            raise OptionsError("SLIPWAY_API_KEYS starts with '[' but is not a JSON list of strings") from None
    else:
        keys = raw.split(",")
    return tuple(dict.fromkeys(k.strip() for k in keys if k.strip()))


def _flag(environ: Mapping[str, str], name: str, default: bool = True) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        raise OptionsError(f"{name}={raw!r} is not a boolean (1/0, true/false)")
    return raw in ("1", "true", "yes", "on")


def _paths(raw: str) -> tuple[str, ...]:
    paths = tuple(p.strip() for p in raw.split(",") if p.strip())
    bad = [p for p in paths if not p.startswith("/")]
    if bad:
        raise OptionsError(f"SLIPWAY_AUTH_OPEN_PATHS entries must start with '/': {bad}")
    return paths


def _unknown_categories(environ: Mapping[str, str]) -> Literal["refuse", "accept"]:
    raw = environ.get("SLIPWAY_UNKNOWN_CATEGORIES", "").strip().lower() or "refuse"
    if raw == "refuse":
        return "refuse"
    if raw == "accept":
        return "accept"
    raise OptionsError(f"SLIPWAY_UNKNOWN_CATEGORIES={raw!r} is neither 'refuse' nor 'accept'")


def options_from_env(environ: Mapping[str, str], arguments: Mapping[str, Any] | None = None) -> ServiceOptions:
    """Service options from the environment; Bento arguments (set at build) win for the model tag."""
    max_rows = _positive(environ, "SLIPWAY_MAX_BATCH_ROWS", 1000, int)
    if max_rows == 0:
        raise OptionsError("SLIPWAY_MAX_BATCH_ROWS must be at least 1")
    workers = _positive(environ, "SLIPWAY_WORKERS", 0, int)
    timeout = _positive(environ, "SLIPWAY_TIMEOUT_S", 30.0, float)
    max_body = _positive(environ, "SLIPWAY_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, int)
    if max_body == 0:
        raise OptionsError("SLIPWAY_MAX_BODY_BYTES must be at least 1")
    open_raw = environ.get("SLIPWAY_AUTH_OPEN_PATHS")
    model_tag = (arguments or {}).get("model_tag") or environ.get("SLIPWAY_MODEL_TAG") or None
    return ServiceOptions(
        model_tag=str(model_tag) if model_tag else None,
        max_batch_rows=max_rows,
        workers=workers or "cpu_count",
        timeout_s=timeout or 30.0,
        api_keys=api_keys_from(environ.get("SLIPWAY_API_KEYS", "")),
        open_paths=DEFAULT_OPEN_PATHS if open_raw is None else _paths(open_raw),
        max_body_bytes=max_body,
        fast_path=_flag(environ, "SLIPWAY_FAST_PATH"),
        adaptive_batching=_flag(environ, "SLIPWAY_ADAPTIVE_BATCHING"),
        access_log=_flag(environ, "SLIPWAY_ACCESS_LOG"),
        unknown_categories=_unknown_categories(environ),
    )
