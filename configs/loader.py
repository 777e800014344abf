"""Layered config loading: base.yaml, then env/<env>.yaml, then an overlay file, then SLIPWAY__ variables.

Every leaf value remembers where it came from, so a validation error names the file (or the
environment variable) and the dotted field path, before any work starts.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from configs.settings import Settings

CONFIG_DIR = Path(__file__).resolve().parent
ENV_PREFIX = "SLIPWAY__"


class ConfigError(ValueError):
    """A config file or variable is missing, malformed or fails validation; the message names each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid slipway config:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class LoadedConfig:
    settings: Settings
    sources: tuple[str, ...]
    config_dir: Path

    def settings_hash(self) -> str:
        """Short hash of the effective config (secrets excluded), recorded as release lineage."""
        payload = self.settings.model_dump_json(exclude={"serving": {"api_keys"}})
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def expectations_path(self) -> Path:
        """The Great Expectations suite file named by model.expectations."""
        name = Path(self.settings.model.expectations)
        if name.is_absolute() or name.exists():
            return name.resolve()
        return self.config_dir / "expectations" / name


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: top level must be a mapping, got {type(data).__name__}"])
    return data


def _merge(
    into: dict[str, Any],
    update: Mapping[str, Any],
    source: str,
    origin: dict[tuple[str, ...], str],
    prefix: tuple[str, ...] = (),
) -> None:
    for key, value in update.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value, source, origin, path)
        else:
            into[key] = json.loads(json.dumps(value, default=str)) if isinstance(value, Mapping) else value
            origin[path] = source
            if isinstance(value, Mapping):
                for sub in _leaf_paths(value, path):
                    origin[sub] = source


def _leaf_paths(mapping: Mapping[str, Any], prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
    paths = []
    for key, value in mapping.items():
        path = (*prefix, str(key))
        paths.append(path)
        if isinstance(value, Mapping):
            paths.extend(_leaf_paths(value, path))
    return paths


def _env_layer(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    layer: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        if not all(path):
            raise ConfigError([f"environment variable {name}: empty path segment"])
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        node = layer
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
        origin[path] = f"environment variable {name}"
    return layer, origin


def _where(loc: tuple[str | int, ...], origin: dict[tuple[str, ...], str], default: str) -> str:
    keys = tuple(str(part) for part in loc)
    for end in range(len(keys), 0, -1):
        if keys[:end] in origin:
            return origin[keys[:end]]
    return default


def load_config(
    env: str | None = None,
    overlay: Path | None = None,
    config_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """Load, merge and validate the config layers; raise ConfigError naming file and field on any problem."""
    config_dir = (config_dir or Path(os.environ.get("SLIPWAY_CONFIG_DIR", CONFIG_DIR))).resolve()
    environ = os.environ if environ is None else environ
    env = env or environ.get("SLIPWAY_ENV") or None
    files = [config_dir / "base.yaml"]
    if env:
        files.append(config_dir / "env" / f"{env}.yaml")
    if overlay is not None:
        files.append(Path(overlay))

    merged: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    for path in files:
        _merge(merged, _read_yaml(path), str(path), origin)
    env_values, env_origin = _env_layer(environ)
    _merge(merged, env_values, "environment", origin)
    origin.update(env_origin)

    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            dotted = ".".join(str(part) for part in loc) or "<root>"
            source = _where(loc, origin, str(files[-1]))
            problems.append(f"{source}: {dotted}: {error['msg'].lower()}")
        raise ConfigError(problems) from None
    return LoadedConfig(settings=settings, sources=tuple(str(f) for f in files), config_dir=config_dir)


def config_schema() -> dict[str, Any]:
    """JSON schema of the settings tree, for editors and `slipway config schema`."""
    return Settings.model_json_schema()


def process_environment(settings: Settings) -> dict[str, str]:
    """Environment for slipway's own processes: state under project.home, no telemetry."""
    home = settings.home
    return {
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "MLFLOW_REGISTRY_URI": settings.registry_uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "BENTOML_HOME": str(settings.bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The ephemeral API migrates a fresh database on first start; 20 s is not enough on a busy 2-core box.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "INFO"),
    }
