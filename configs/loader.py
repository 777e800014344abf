"""Layered config loading: base.yaml, then env/<env>.yaml, then an overlay file, then the secrets file
(SLIPWAY_SECRETS_FILE), then SLIPWAY__ variables.

Every leaf value remembers where it came from, so a validation error names the file (or the
environment variable) and the dotted field path, before any work starts. Secrets (serving.api_keys, a password
in a database URL) are accepted only from the environment or the secrets file: a config file that holds one is
refused, naming the file and the field but never the value. YAML aliases (`*name`) are refused: they let a few
lines expand into gigabytes (the "billion laughs").
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from configs.settings import Settings

CONFIG_DIR = Path(__file__).resolve().parent
ENV_PREFIX = "SLIPWAY__"
SECRETS_FILE_ENV = "SLIPWAY_SECRETS_FILE"
# Fields that are secrets themselves, and URL fields whose password part is one.
SECRET_FIELDS = (("serving", "api_keys"), ("stack", "postgres_password"))
URL_FIELDS = (
    ("serving", "inference_log_url"),
    ("mlflow", "tracking_uri"),
    ("mlflow", "registry_uri"),
    ("data", "url"),
    ("stack", "postgres_url"),
)
_SECRET_SOURCES = ("environment variable ", "secrets file ")  # and "environment": a whole section set by one


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


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases: a few nested `*name` references expand into billions of nodes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"YAML alias *{event.anchor} is not allowed in a slipway config", event.start_mark
            )
        return super().compose_node(parent, index)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=_NoAliasLoader)  # a SafeLoader without aliases
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
            origin.pop(path, None)  # re-inserted: origin's order is the order values were last set in
            origin[path] = source
            if isinstance(value, Mapping):
                for sub in _leaf_paths(value, path):
                    origin.pop(sub, None)
                    origin[sub] = source


def _forget_other_models_params(
    merged: dict[str, Any], layer: Mapping[str, Any], origin: dict[tuple[str, ...], str]
) -> None:
    """A layer that names another model entrypoint starts that model's params afresh: the lower layers' params
    were meant for their own builder (the base's tree-ensemble settings mean nothing to an MLP, and would be
    logged to MLflow as if they did)."""
    model = layer.get("model")
    lower = merged.get("model")
    if not (isinstance(model, Mapping) and isinstance(lower, dict) and "entrypoint" in model):
        return
    if model["entrypoint"] == lower.get("entrypoint") or "params" not in lower:
        return
    del lower["params"]
    for path in [p for p in origin if p[:2] == ("model", "params")]:
        del origin[path]


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


def _secret_problems(merged: Mapping[str, Any], origin: dict[tuple[str, ...], str]) -> list[str]:
    """Secrets that came from a config file rather than the environment or the secrets file (values never shown)."""
    problems = []

    def value_at(path: tuple[str, ...]) -> Any:
        node: Any = merged
        for part in path:
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node

    def from_file(path: tuple[str, ...]) -> str | None:
        sources = {where for key, where in origin.items() if key[: len(path)] == path}
        files = sorted(w for w in sources if w != "environment" and not w.startswith(_SECRET_SOURCES))
        return files[0] if files else None

    for path in SECRET_FIELDS:
        source = from_file(path)
        if value_at(path) not in (None, [], "") and source is not None:
            dotted = ".".join(path)
            problems.append(
                f"{source}: {dotted}: a secret must not be in a config file; set "
                f"{ENV_PREFIX}{'__'.join(p.upper() for p in path)} or put it in the {SECRETS_FILE_ENV} file"
            )
    for path in URL_FIELDS:
        value = value_at(path)
        source = from_file(path)
        if isinstance(value, str) and source is not None and _has_password(value):
            dotted = ".".join(path)
            problems.append(
                f"{source}: {dotted}: the URL holds a password, which must not be in a config file; set "
                f"{ENV_PREFIX}{'__'.join(p.upper() for p in path)} or put it in the {SECRETS_FILE_ENV} file"
            )
    return problems


def _has_password(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        return bool(urlsplit(url).password)
    except ValueError:
        return False


def _where(loc: tuple[str | int, ...], origin: dict[tuple[str, ...], str], default: str) -> str:
    keys = tuple(str(part) for part in loc)
    # A whole section judged at once (a model validator): the last layer that set anything in it is the culprit,
    # not the base file that first created the section. Layers were merged in order, so the last-set key wins.
    below = [where for key, where in origin.items() if len(key) > len(keys) and key[: len(keys)] == keys]
    if below:
        return below[-1]
    for end in range(len(keys), 0, -1):
        if keys[:end] in origin:
            return origin[keys[:end]]
    return default


def _last_set(fields: Sequence[str], origin: dict[tuple[str, ...], str]) -> tuple[str, ...]:
    """Of the dotted fields a check involves, the one a layer set last (origin is in the order values were last
    set), or the first when none was set (all defaults)."""
    order = {key: rank for rank, key in enumerate(origin)}
    paths = [tuple(field.split(".")) for field in fields]
    return max(paths, key=lambda path: order.get(path, -1))


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
        layer = _read_yaml(path)
        _forget_other_models_params(merged, layer, origin)
        _merge(merged, layer, str(path), origin)
    secrets_file = environ.get(SECRETS_FILE_ENV, "").strip()
    if secrets_file:
        _merge(merged, _read_yaml(Path(secrets_file)), f"secrets file {secrets_file}", origin)
    env_values, env_origin = _env_layer(environ)
    _merge(merged, env_values, "environment", origin)
    for key, where in env_origin.items():
        origin.pop(key, None)
        origin[key] = where
    problems = _secret_problems(merged, origin)
    if problems:
        raise ConfigError(problems)

    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            fields = (error.get("ctx") or {}).get("fields")
            if fields:  # a check across fields (settings.conflict): name the one set last, and where it was set
                loc = _last_set(fields, origin)
            dotted = ".".join(str(part) for part in loc) or "<root>"
            source = _where(loc, origin, str(files[-1]))
            message = error["msg"] if fields else error["msg"].lower()
            problems.append(f"{source}: {dotted}: {message}")
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
