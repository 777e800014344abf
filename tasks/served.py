"""One view of serving and one way to move it, whichever serving.target is configured.

local: the HAProxy front and `bentoml serve` backend that `slipway deploy` runs on this machine (tasks.deploy).
remote: a service run elsewhere, read at serving.remote.url and redeployed by its command (tasks.remote).
sync and the monitor only talk to this module, so a promotion in the MLflow UI reaches either kind of serving.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from configs.settings import Settings
from serving.inference_log import absent_sqlite_file
from tasks.deploy import TAG_BENTO, bento_info, deploy_bento, resolve_target, serving_status
from tasks.errors import ServingError
from tasks.package import stored_model_dir
from tasks.remote import remote_target, remote_view, roll_out
from tasks.resources import Registry
from tasks.types import Result

# The password of a URL's user info (postgresql://user:secret@host): never printed.
_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")

ServedCondition = Literal["serving", "degraded", "unreachable", "stopped"]


class Served(Result):
    """What serves now. `url` is where to probe and scrape; `model_tag` is the served BentoML model when the
    serving says which (local serving; remote serving reports only the version: served_model_dir finds it)."""

    target: Literal["local", "remote"]
    condition: ServedCondition
    url: str | None
    model_version: str | None
    model_tag: str | None
    detail: str

    @property
    def answering(self) -> bool:
        return self.condition in ("serving", "degraded") and self.url is not None


class Deployed(Result):
    model_version: str
    bento_tag: str
    url: str
    seconds: float
    detail: str


def api_key(settings: Settings) -> str | None:
    keys = settings.serving.api_keys
    return keys[0].get_secret_value() if keys else None


def served_model_dir(settings: Settings, registry: Registry, served: Served) -> Path | None:
    """The served model in this machine's BentoML store, or None when it is not there (for remote serving it is
    found through the Bento the version's release recorded). The monitor's reference predictions need it."""
    if served.model_tag is not None:
        return stored_model_dir(settings.bentoml_home, served.model_tag)
    if served.model_version is None:
        return None
    bento_tag = registry.version_tags(settings.model.name, served.model_version).get(TAG_BENTO)
    if not bento_tag:
        return None
    try:
        info = bento_info(settings.bentoml_home, bento_tag)
    except ServingError:
        return None
    return stored_model_dir(settings.bentoml_home, info.model_tag)


def current(settings: Settings) -> Served:
    """What is serving, as the configured target sees it; never raises for serving that is down."""
    if settings.serving.target == "remote":
        assert settings.serving.remote is not None  # the settings validator guarantees it
        view = remote_view(settings.serving.remote, settings.model.name, api_key(settings))
        condition: ServedCondition = {"serving": "serving", "unhealthy": "degraded"}.get(  # type: ignore[assignment]
            view.condition, "unreachable"
        )
        return Served(
            target="remote",
            condition=condition,
            url=view.url if view.condition != "unreachable" else None,
            model_version=view.model_version,
            model_tag=None,
            detail=view.detail,
        )
    status = serving_status(settings.home)
    if status.state is None or status.condition == "stale":
        return Served(
            target="local", condition="stopped", url=None, model_version=None, model_tag=None, detail=status.detail
        )
    backend = status.state.backend
    return Served(
        target="local",
        condition="serving" if status.condition == "serving" else "degraded",
        url=status.state.front.probe_url,
        model_version=backend.model_version,
        model_tag=backend.model_tag,
        detail=status.detail,
    )


def deploy_version(settings: Settings, registry: Registry, version: str | None) -> Deployed:
    """Serve `version` (default: the champion) on the configured target and wait until it answers."""
    name, alias = settings.model.name, settings.promotion.champion_alias
    if settings.serving.target == "remote":
        remote = settings.serving.remote
        assert remote is not None
        target = remote_target(registry, name, alias, version)
        rollout = roll_out(remote, target, api_key(settings))
        took = rollout.command_s + rollout.settle_s
        return Deployed(
            model_version=target.model_version,
            bento_tag=target.bento_tag,
            url=remote.url,
            seconds=took,
            detail=f"{remote.url} serves v{target.model_version} ({target.bento_tag}): `{rollout.argv[0]}` "
            f"took {rollout.command_s:.1f} s, {remote.settle_scrapes} scrapes agreed {rollout.settle_s:.1f} s later",
        )
    start = time.monotonic()
    local = resolve_target(registry, name, alias, settings.bentoml_home, version)
    result = deploy_bento(
        local.bento.tag, settings.serving, settings.home, settings.bentoml_home, settings.inference_log_url
    )
    return Deployed(
        model_version=result.state.backend.model_version,
        bento_tag=local.bento.tag,
        url=result.url,
        seconds=time.monotonic() - start,
        detail=f"serving v{result.state.backend.model_version} ({local.bento.tag}) at {result.url}",
    )


class ChampionView(Result):
    """Whether what serves is what the champion alias points at (`slipway status`). `error`: the registry could
    not be read, so nobody knows."""

    alias: str
    champion: str | None
    serving: str | None
    error: str | None = None

    @property
    def matches(self) -> bool:
        return self.error is None and self.champion is not None and self.champion == self.serving

    @property
    def behind(self) -> bool:
        """Another version serves than the one the alias points at."""
        return self.error is None and None not in (self.champion, self.serving) and not self.matches

    def line(self, sync_interval_s: float) -> str:
        """One line of plain text (no markup: an error message may hold brackets)."""
        if self.error is not None:
            return f"unknown: {self.error}"
        if self.champion is None:
            return f"none: no version has the {self.alias} alias yet"
        if self.serving is None:
            return f"v{self.champion}, not serving (`slipway deploy` serves it)"
        if self.matches:
            return f"v{self.champion}, serving it"
        return (
            f"v{self.champion}, not serving it: serving v{self.serving} (`slipway sync` deploys the "
            f"{self.alias}; `slipway up` runs sync every {sync_interval_s:g} s, and a `slipway deploy VERSION` of "
            "another version stays until the alias moves)"
        )


@contextmanager
def _quick_registry_calls(timeout_s: float) -> Iterator[None]:
    """MLflow's HTTP client retries a failed call for minutes by default; a status line must not wait that long."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": f"{timeout_s:g}"}
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def champion_view(
    registry: Registry, name: str, alias: str, serving_version: str | None, timeout_s: float = 5.0
) -> ChampionView:
    """The champion's version next to the serving one; a registry that cannot be read is reported, not raised.
    A SQLite registry that does not exist is reported as missing, not created (MLflow's client would create it)."""
    from mlflow.exceptions import MlflowException

    uri = registry.registry_uri
    # MLflow takes URIs that are no SQLAlchemy URL ("databricks", a folder path): only a sqlite: one has a file.
    missing = absent_sqlite_file(uri) if uri.startswith("sqlite:") else None
    if missing is not None:
        error = f"no MLflow registry at {uri} ({missing} does not exist)"
        return ChampionView(alias=alias, champion=None, serving=serving_version, error=error)
    try:
        with _quick_registry_calls(timeout_s):
            champion = registry.aliases(name).get(alias)
    except MlflowException as exc:
        reason = (exc.message.splitlines() or [type(exc).__name__])[0][:200]
        error = f"the registry at {registry.registry_uri} could not be read ({reason})"
        return ChampionView(alias=alias, champion=None, serving=serving_version, error=_PASSWORD.sub(r"\1***@", error))
    return ChampionView(alias=alias, champion=champion, serving=serving_version)
