"""The `slipway` command line. Heavy libraries are imported inside commands, so `--help` is instant."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from configs import ConfigError, LoadedConfig, config_schema, load_config, process_environment

if TYPE_CHECKING:
    from tasks.deploy import DeployResult, ServingStatus
    from tasks.types import HistoryEntry, ReleaseSummary

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

app = typer.Typer(
    name="slipway",
    help="Launch trained models into production and haul them back: train, release (register, convert to ONNX, "
    "optimize, validate, build a Bento, promote), promote, roll back.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the configuration: merged values and the schema.", no_args_is_help=True)
app.add_typer(config_app, name="config")

EnvOption = Annotated[
    str | None,
    typer.Option("--env", "-e", help="Layer configs/env/ENV.yaml over configs/base.yaml (default: $SLIPWAY_ENV)."),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="An extra YAML file layered last, before SLIPWAY__* environment variables."),
]


def _load(env: str | None, config: Path | None) -> LoadedConfig:
    """Validated config, or a clear error naming file and field and exit code 2; then the process environment."""
    try:
        loaded = load_config(env=env, overlay=config)
    except ConfigError as exc:
        err.print("[bold red]config error[/]\n  " + "\n  ".join(exc.problems), highlight=False)
        raise typer.Exit(2) from None
    loaded.settings.home.mkdir(parents=True, exist_ok=True)
    for key, value in process_environment(loaded.settings).items():
        os.environ.setdefault(key, value)
    return loaded


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[bold red]{type(exc).__name__}[/]: {exc}", highlight=False)
    return typer.Exit(1)


@config_app.command("show")
def config_show(env: EnvOption = None, config: ConfigOption = None) -> None:
    """Print the merged configuration (base, env, overlay, environment variables) and where it came from."""
    loaded = _load(env, config)
    console.print(f"# sources: {', '.join(loaded.sources)} + SLIPWAY__* environment variables", highlight=False)
    console.print_json(loaded.settings.model_dump_json(exclude={"serving": {"api_keys"}}))


@config_app.command("schema")
def config_schema_cmd() -> None:
    """Print the JSON schema of the settings tree: every key, its type, default and meaning."""
    console.print_json(json.dumps(config_schema()))


@config_app.command("check")
def config_check(env: EnvOption = None, config: ConfigOption = None) -> None:
    """Validate the configuration and exit 0, or print each problem with its file and field and exit 2."""
    loaded = _load(env, config)
    console.print(f"[green]config ok[/] ({', '.join(loaded.sources)})", highlight=False)


@app.command()
def train(
    env: EnvOption = None,
    config: ConfigOption = None,
    release: Annotated[
        bool, typer.Option("--release/--no-release", help="Run the release flow after training.")
    ] = True,
) -> None:
    """Train the configured model, log it to MLflow and (by default) release it."""
    loaded = _load(env, config)
    console.rule(f"[bold]slipway train[/] {loaded.settings.model.name}")
    from flows.train import train_flow
    from tasks.errors import SlipwayError

    try:
        result = train_flow(env=env, config_file=str(config) if config else None, release_after=release)
    except SlipwayError as exc:
        raise _fail(exc) from None
    if release:
        _print_release(result, loaded)  # type: ignore[arg-type]
    else:
        console.print(f"logged run [bold]{result.run_id}[/] model {result.model_uri}")  # type: ignore[union-attr]


@app.command("release")
def release_cmd(
    run_id: Annotated[str | None, typer.Option("--run-id", help="MLflow run whose logged model to release.")] = None,
    model_uri: Annotated[
        str | None, typer.Option("--model-uri", help="A model URI instead (runs:/..., models:/m-...).")
    ] = None,
    env: EnvOption = None,
    config: ConfigOption = None,
) -> None:
    """Release a logged model: register, convert, optimize, validate, build a Bento, promote."""
    if not run_id and not model_uri:
        err.print("give --run-id or --model-uri")
        raise typer.Exit(2)
    loaded = _load(env, config)
    console.rule(f"[bold]slipway release[/] {loaded.settings.model.name}")
    from flows.release import release
    from tasks.errors import SlipwayError

    try:
        summary = release(run_id=run_id, model_uri=model_uri, env=env, config_file=str(config) if config else None)
    except SlipwayError as exc:
        raise _fail(exc) from None
    _print_release(summary, loaded)


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Model version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why; recorded in the promotion history.")] = "promoted by hand",
    force: Annotated[bool, typer.Option(help="Promote even a version its gates rejected.")] = False,
    env: EnvOption = None,
    config: ConfigOption = None,
) -> None:
    """Move the champion alias to VERSION (all or nothing, recorded in the history)."""
    _load(env, config)
    from flows.promotion import promote as promote_flow
    from tasks.errors import SlipwayError

    try:
        entry = promote_flow(version=version, reason=reason, force=force, env=env, config_file=_opt(config))
    except SlipwayError as exc:
        raise _fail(exc) from None
    _print_entry(entry)


@app.command()
def rollback(
    reason: Annotated[
        str, typer.Option(help="Why; recorded in the history and on the bad version.")
    ] = "rolled back by hand",
    env: EnvOption = None,
    config: ConfigOption = None,
) -> None:
    """Move the champion back to the previous good champion; the version left is never returned to."""
    _load(env, config)
    from flows.promotion import rollback as rollback_flow
    from tasks.errors import SlipwayError

    try:
        entry = rollback_flow(reason=reason, env=env, config_file=_opt(config))
    except SlipwayError as exc:
        raise _fail(exc) from None
    _print_entry(entry)


@app.command()
def history(
    env: EnvOption = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead of a table.")] = False,
) -> None:
    """Print the promotion history: every alias move, who made it, from which version to which, and why."""
    loaded = _load(env, config)
    from tasks.registry import read_history
    from tasks.resources import registry_from_settings

    entries = read_history(registry_from_settings(loaded.settings), loaded.settings.model.name)
    if as_json:
        for entry in entries:
            console.print(entry.model_dump_json(), highlight=False, soft_wrap=True)
        return
    table = Table(title=f"promotion history: {loaded.settings.model.name}")
    for column in ("when (UTC)", "action", "moves", "actor", "status", "reason"):
        table.add_column(column)
    for entry in entries:
        moves = ", ".join(f"{m.alias}: v{m.from_version or '-'} -> v{m.to_version}" for m in entry.moves)
        table.add_row(
            entry.at.strftime("%Y-%m-%d %H:%M:%S"), entry.action, moves, entry.actor, entry.status, entry.reason
        )
    console.print(table)


@app.command()
def models(env: EnvOption = None, config: ConfigOption = None) -> None:
    """List the registered versions of the configured model with their aliases, status and Bento tag."""
    loaded = _load(env, config)
    from tasks.resources import registry_from_settings

    reg = registry_from_settings(loaded.settings)
    name = loaded.settings.model.name
    by_version: dict[str, list[str]] = {}
    for alias, version in reg.aliases(name).items():
        by_version.setdefault(version, []).append(alias)
    table = Table(title=f"{name} at {loaded.settings.tracking_uri}")
    for column in ("version", "aliases", "status", "gates", "onnx", "bento"):
        table.add_column(column)
    versions = reg.client.search_model_versions(f"name = '{name}'") if reg.model_exists(name) else []
    for mv in sorted(versions, key=lambda v: int(v.version)):
        tags = mv.tags
        table.add_row(
            str(mv.version),
            ", ".join(sorted(by_version.get(str(mv.version), []))),
            tags.get("slipway.status", ""),
            tags.get("slipway.gates", ""),
            tags.get("slipway.onnx.variant", ""),
            tags.get("slipway.bento.tag", ""),
        )
    console.print(table)


@app.command("deploy")
def deploy_cmd(
    version: Annotated[
        str | None, typer.Argument(help="Model version to serve (default: the version the champion alias points at).")
    ] = None,
    ready_timeout: Annotated[
        float, typer.Option(help="Seconds the new server may take to answer /readyz before the deploy gives up.")
    ] = 180.0,
    env: EnvOption = None,
    config: ConfigOption = None,
) -> None:
    """Serve the champion's Bento (or VERSION's) on serving.host:serving.port behind HAProxy and wait until it is
    ready. A server already running is replaced without failing a request; if the new one cannot start, the old
    one keeps serving."""
    loaded = _load(env, config)
    s = loaded.settings
    console.rule(f"[bold]slipway deploy[/] {s.model.name} {'v' + version if version else s.promotion.champion_alias}")
    from flows.deploy import deploy as deploy_flow
    from tasks.errors import SlipwayError

    try:
        result = deploy_flow(version=version, env=env, config_file=_opt(config), ready_timeout_s=ready_timeout)
    except SlipwayError as exc:
        raise _fail(exc) from None
    _print_deploy(result)


@app.command()
def status(
    env: EnvOption = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON instead of a table.")] = False,
) -> None:
    """Show what is serving: model version, Bento tag, URL, pids, uptime and health. Exits 0 only when the
    server is healthy, 1 otherwise (stopped, degraded or stale)."""
    loaded = _load(env, config)
    from tasks.deploy import serving_status

    current = serving_status(loaded.settings.home)
    if as_json:
        console.print(current.model_dump_json(), highlight=False, soft_wrap=True)
    else:
        _print_status(current)
    if current.condition != "serving":
        raise typer.Exit(1)


@app.command("stop")
def stop_cmd(env: EnvOption = None, config: ConfigOption = None) -> None:
    """Stop serving: the front stops listening and finishes the requests in flight, then every server stops."""
    _load(env, config)
    from flows.deploy import stop as stop_flow
    from tasks.errors import SlipwayError

    try:
        result = stop_flow(env=env, config_file=_opt(config))
    except SlipwayError as exc:
        raise _fail(exc) from None
    if not result.stopped:
        console.print("nothing was serving", highlight=False)
    for line in result.stopped:
        console.print(f"[bold]stopped[/]  {line}", highlight=False)


def _opt(path: Path | None) -> str | None:
    return str(path) if path else None


def _print_entry(entry: HistoryEntry) -> None:
    for move in entry.moves:
        console.print(
            f"[bold]{entry.model_name}[/] {move.alias}: v{move.from_version or '-'} -> [bold]v{move.to_version}[/] "
            f"({entry.action}: {entry.reason})",
            highlight=False,
        )


def _print_release(summary: ReleaseSummary, loaded: LoadedConfig) -> None:
    s = loaded.settings
    status = "[bold green]released[/]" if summary.gate_passed else "[bold red]rejected[/]"
    console.rule(f"{summary.model_name} v{summary.version}: {status}")
    rows: list[tuple[str, Any]] = [
        ("MLflow run", f"{summary.run_id}  ({summary.tracking_uri})"),
        ("model version", f"models:/{summary.model_name}/{summary.version}"),
        ("aliases", ", ".join(f"{a}=v{v}" for a, v in sorted(summary.aliases.items())) or "none"),
        (
            "ONNX variant",
            f"{summary.onnx_variant}, {summary.onnx_size_bytes / 1024:.1f} KiB, "
            f"{summary.speedup:.2f}x single-row speed of the plain conversion",
        ),
        ("gate report", str(summary.gate_report_path)),
    ]
    for label, value in rows:
        console.print(f"[bold]{label:>14}[/]  {value}", highlight=False)
    for check in summary.checks:
        colour = "green" if check.passed else "red"
        console.print(f"{'':>16}[{colour}]{check.line()}[/]", highlight=False)
    if summary.bento_tag:
        console.print(f"[bold]{'Bento':>14}[/]  {summary.bento_tag}", highlight=False)
        console.print(
            f"[bold]{'serve it':>14}[/]  BENTOML_HOME={s.bentoml_home} bentoml serve {summary.bento_tag} "
            f"--host {s.serving.host} --port {s.serving.port}",
            highlight=False,
        )
    if summary.promotion:
        console.print(f"[bold]{'promotion':>14}[/]  {summary.promotion.reason}", highlight=False)
    console.print(
        f"[bold]{'MLflow UI':>14}[/]  mlflow ui --backend-store-uri {s.tracking_uri} --port 5000", highlight=False
    )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"


def _print_deploy(result: DeployResult) -> None:
    front, backend = result.state.front, result.state.backend
    console.rule(f"{backend.model_name} v{backend.model_version}: [bold green]serving[/]")
    replaced = result.replaced
    rows: list[tuple[str, Any]] = [
        ("URL", f"{result.url}/predict  (OpenAPI: {result.url}/docs.json)"),
        ("Bento", backend.bento_tag),
        ("front", f"HAProxy pid {front.pid}{' (started)' if result.front_started else ' (reloaded)'}"),
        ("server", f"bentoml serve pid {backend.pid} on 127.0.0.1:{backend.port}"),
        (
            "replaced",
            f"v{replaced.model_version} ({replaced.bento_tag}), drained and stopped" if replaced else "nothing",
        ),
        ("took", f"ready {result.ready_s:.1f} s, switch {result.switch_s:.1f} s, drain {result.drain_s:.1f} s"),
        ("logs", f"{backend.log_path}  {front.log_path}"),
        ("next", "slipway status | slipway stop"),
    ]
    for label, value in rows:
        console.print(f"[bold]{label:>14}[/]  {value}", highlight=False)


def _print_status(current: ServingStatus) -> None:
    colour = {"serving": "green", "degraded": "yellow", "stale": "yellow", "stopped": "red"}[current.condition]
    state = current.state
    if state is None:
        console.print(f"[bold {colour}]{current.condition}[/]: {current.detail}", highlight=False)
        return
    front, backend = state.front, state.backend
    health = current.health
    probe = (
        f"/readyz {health.status_code or health.detail}"
        + (f" in {health.latency_ms:.0f} ms" if health.latency_ms is not None else "")
        if health
        else "not probed"
    )
    rows: list[tuple[str, Any]] = [
        ("status", f"[bold {colour}]{current.condition}[/] ({current.detail}; {probe})"),
        ("model", f"{backend.model_name} v{backend.model_version}"),
        ("Bento", backend.bento_tag),
        ("URL", f"{front.url}/predict"),
        ("front", f"HAProxy pid {front.pid} ({'running' if current.front_alive else 'gone'})"),
        (
            "server",
            f"bentoml serve pid {backend.pid} on 127.0.0.1:{backend.port} "
            f"({'running' if current.backend_alive else 'gone'})",
        ),
        ("uptime", f"{_duration(current.uptime_s or 0)} since {backend.started_at:%Y-%m-%d %H:%M:%S} UTC"),
        ("logs", f"{backend.log_path}  {front.log_path}"),
    ]
    if current.orphans:
        rows.append(("orphans", f"servers running outside the state: pids {list(current.orphans)} (slipway stop)"))
    for label, value in rows:
        console.print(f"[bold]{label:>14}[/]  {value}", highlight=False)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="slipway")


if __name__ == "__main__":
    main()
