"""What every flow starts from: the validated config and the resources it describes."""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass
from pathlib import Path

from configs import LoadedConfig, Settings, load_config
from tasks.resources import Registry, registry_from_settings


@dataclass(frozen=True)
class FlowContext:
    loaded: LoadedConfig
    registry: Registry

    @property
    def settings(self) -> Settings:
        return self.loaded.settings


def open_context(env: str | None, config_file: str | None) -> FlowContext:
    """Load and validate config (failing before any work), then build the resources from it."""
    loaded = load_config(env=env, overlay=Path(config_file) if config_file else None)
    return FlowContext(loaded=loaded, registry=registry_from_settings(loaded.settings))


def actor() -> str:
    """Who is acting: the Prefect flow run when there is one, else the local user."""
    from prefect.runtime import flow_run

    name = flow_run.name
    if name:
        return f"prefect:{flow_run.flow_name}/{name}"
    return f"{getpass.getuser()}@{socket.gethostname()}"
