"""One process serving slipway's Prefect deployments; `slipway up` starts it, `slipway down` stops it.

    python -m flows.serve [--env ENV] [--config FILE]

`monitor` runs on monitor.schedule_cron, `sync` every monitor.sync_interval_s seconds, and `train` has no
schedule: `prefect deployment run train/train` starts it, and so does the monitor when it decides to retrain.
Every run gets the same --env and --config as parameters, so it loads the configuration this process was
started with. PREFECT_API_URL says which Prefect server to serve against. The flows are imported when the
process starts, not when this module is imported, so that `slipway` can read the table without loading them.
infra/prefect.yaml declares the same three deployments for a worker-based setup; `slipway up --profile server`
registers that file and runs them with a Prefect process worker instead of this process.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from configs.settings import MonitorSettings

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: its name, the flow it runs (`module:function`) and its schedule, if any."""

    name: str
    entrypoint: str
    description: str
    cron: str | None = None
    interval_s: float | None = None


def deployment_specs(monitor: MonitorSettings) -> tuple[DeploymentSpec, ...]:
    """The deployments `slipway up` serves, with their schedules from the monitor settings."""
    return (
        DeploymentSpec(
            name="monitor",
            entrypoint="flows.monitor:monitor_flow",
            description="Judge what the served model saw (drift, data checks, latency, errors) and act on it.",
            cron=monitor.schedule_cron,
        ),
        DeploymentSpec(
            name="sync",
            entrypoint="flows.sync:sync_flow",
            description="Serve what the registry's champion alias points at (registry -> serving).",
            interval_s=monitor.sync_interval_s,
        ),
        DeploymentSpec(
            name="train",
            entrypoint="flows.train:train_flow",
            description="Train the configured model and release it; started by hand or by the monitor.",
        ),
    )


def load_flow(entrypoint: str) -> Flow[Any, Any]:
    """The flow object at `module:function`; TypeError if that is not a Prefect flow."""
    from prefect import Flow

    module, _, attribute = entrypoint.partition(":")
    found = getattr(importlib.import_module(module), attribute)
    if not isinstance(found, Flow):
        raise TypeError(f"{entrypoint} is a {type(found).__name__}, not a Prefect flow")
    return found


def to_deployments(specs: tuple[DeploymentSpec, ...], parameters: dict[str, Any]) -> list[RunnerDeployment]:
    """Runner deployments of the specs, each run with `parameters` and at most one run at a time."""
    from prefect.deployments.runner import EntrypointType

    deployments = []
    for spec in specs:
        deployment = load_flow(spec.entrypoint).to_deployment(
            name=spec.name,
            cron=spec.cron,
            interval=spec.interval_s,
            parameters=parameters,
            description=spec.description,
            tags=["slipway"],
            # One at a time: two syncs (or monitors) would race to deploy, two trains to release.
            concurrency_limit=1,
            # By module, not file path: a run imports the installed package from any working directory.
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        # to_deployment returns a coroutine only when called from async code; this is sync.
        deployments.append(cast("RunnerDeployment", deployment))
    return deployments


def main(argv: list[str] | None = None) -> None:
    """Load the configuration, then serve the deployments until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", help="Layer configs/env/ENV.yaml over configs/base.yaml (default: $SLIPWAY_ENV).")
    parser.add_argument("--config", help="An extra YAML file layered last, before SLIPWAY__* variables.")
    args = parser.parse_args(argv)

    from configs import load_config

    config_file = str(Path(args.config).resolve()) if args.config else None
    settings = load_config(env=args.env, overlay=Path(config_file) if config_file else None).settings
    deployments = to_deployments(deployment_specs(settings.monitor), {"env": args.env, "config_file": config_file})

    from prefect import serve

    serve(*deployments)


if __name__ == "__main__":
    main()
