"""The `slipway` command line. Heavy libraries are imported inside commands, so `--help` is instant."""

from __future__ import annotations

import json
import logging
import math
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from configs import ConfigError, LoadedConfig, Settings, config_schema, load_config, process_environment

if TYPE_CHECKING:
    from tasks.deploy import DeployResult, DeployTarget, ServingStatus
    from tasks.image import ImageBuild, ImageContext
    from tasks.served import ChampionView
    from tasks.stack import ComponentStatus, Launch
    from tasks.types import HistoryEntry, ReleaseSummary

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

app = typer.Typer(
    name="slipway",
    help="Launch trained models into production and haul them back: train, release (register, convert to ONNX, "
    "optimize, validate, build a Bento, promote), promote, roll back.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Markdown: help paragraphs reflow to the terminal (typer's "rich" mode keeps a docstring's line breaks).
    rich_markup_mode="markdown",
)
config_app = typer.Typer(
    help="Inspect the configuration: merged values and the schema.", no_args_is_help=True, rich_markup_mode="markdown"
)
app.add_typer(config_app, name="config")
log_app = typer.Typer(
    help="The inference log: what serving was sent and answered (a table row per model call). `log show` looks a "
    "request up; `log prune` deletes old rows.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(log_app, name="log")

EnvOption = Annotated[
    str | None,
    typer.Option("--env", "-e", help="Layer configs/env/ENV.yaml over configs/base.yaml (default: $SLIPWAY_ENV)."),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="An extra YAML file layered last, before SLIPWAY__* environment variables."),
]


_MAX_DAYS = 36_500  # a century: further back than any log, and inside what datetime arithmetic can represent


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


def _table(title: str, *columns: str) -> Table:
    """A table whose long cells (paths, Bento tags, actors) wrap onto more lines instead of being cut with an
    ellipsis: output that is not a terminal (a pipe, a file, `make`) is 80 columns wide."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _relative(path: Path) -> str:
    """`path` relative to the current folder when it is under it (shorter to read and to copy), else as it is."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


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
    table = _table(
        f"promotion history: {loaded.settings.model.name}", "when (UTC)", "action", "moves", "actor", "status", "reason"
    )
    for entry in entries:
        moves = ", ".join(
            f"{m.alias}: {'v' + m.from_version if m.from_version else '(none)'} -> v{m.to_version}" for m in entry.moves
        )
        table.add_row(
            entry.at.strftime("%Y-%m-%d %H:%M:%S"), entry.action, moves, entry.actor, entry.status, entry.reason
        )
    console.print(table)


@app.command()
def models(env: EnvOption = None, config: ConfigOption = None) -> None:
    """List the registered versions of the configured model with their aliases, status and Bento tag."""
    loaded = _load(env, config)
    from tasks.registry import TAG_ROLLED_BACK
    from tasks.resources import registry_from_settings

    reg = registry_from_settings(loaded.settings)
    name = loaded.settings.model.name
    by_version: dict[str, list[str]] = {}
    for alias, version in reg.aliases(name).items():
        by_version.setdefault(version, []).append(alias)
    title = f"{name} at {loaded.settings.tracking_uri}"
    table = _table(title, "version", "aliases", "status", "gates", "onnx", "bento")
    versions = reg.client.search_model_versions(f"name = '{name}'") if reg.model_exists(name) else []
    rows: list[tuple[str, str, str, str, str, str]] = []
    for mv in sorted(versions, key=lambda v: int(v.version)):
        tags = mv.tags
        status = tags.get("slipway.status", "")
        if TAG_ROLLED_BACK in tags:  # a rollback moved the champion away from it: a rollback never returns to it
            status = f"rolled back ({tags[TAG_ROLLED_BACK]})" if tags[TAG_ROLLED_BACK] else "rolled back"
        row = (
            str(mv.version),
            ", ".join(sorted(by_version.get(str(mv.version), []))),
            status,
            tags.get("slipway.gates", ""),
            tags.get("slipway.optimize.variant", ""),
            tags.get("slipway.bento.tag", ""),
        )
        rows.append(row)
        table.add_row(*row)
    unbounded = console.options.update_width(1_000_000)  # the width the table wants, not the console's
    if Measurement.get(console, unbounded, table).maximum <= console.width:  # every cell on one line
        console.print(table)
        return
    # Narrow (a pipe or `make` is 80 columns): a line per version and its Bento tag under it, whole, to copy.
    console.print(f"[bold]{title}[/]", highlight=False, soft_wrap=True)
    for version, aliases, status, gates, onnx_variant, bento in rows:
        details = [f"gates {gates}" if gates else "", f"onnx {onnx_variant}" if onnx_variant else ""]
        line = "  ".join(part for part in (f"v{version:<3}", aliases or "-", status, *details) if part)
        console.print(Text(line), highlight=False, soft_wrap=True)
        if bento:
            console.print(f"     Bento {bento}", highlight=False, soft_wrap=True)


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
    one keeps serving. With serving.target remote: run serving.remote.deploy_command for that version and wait
    until serving.remote.url reports it."""
    loaded = _load(env, config)
    s = loaded.settings
    console.rule(f"[bold]slipway deploy[/] {s.model.name} {'v' + version if version else s.promotion.champion_alias}")
    from flows.deploy import deploy as deploy_flow
    from flows.deploy import deploy_remote
    from tasks.errors import SlipwayError

    if s.serving.target == "remote":
        try:
            deployed = deploy_remote(version=version, env=env, config_file=_opt(config))
        except SlipwayError as exc:
            raise _fail(exc) from None
        console.rule(f"{s.model.name} v{deployed.model_version}: [bold green]serving[/] (remote)")
        console.print(f"[bold]{'URL':>14}[/]  {deployed.url}/predict", highlight=False)
        console.print(f"[bold]{'done':>14}[/]  {deployed.detail}", highlight=False)
        return
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
    """Show what is serving: model version, Bento tag, URL, pids, uptime and health; and the processes `slipway up`
    started (name, pid, URL, alive). Exits 0 only when the server is healthy and every one of those processes is
    alive, 1 otherwise (stopped, degraded or stale). With serving.target remote: what serving.remote.url reports."""
    loaded = _load(env, config)
    from tasks.deploy import serving_status
    from tasks.stack import read_stack, stack_status

    if loaded.settings.serving.target == "remote":
        raise typer.Exit(_remote_status(loaded.settings, as_json))
    current = serving_status(loaded.settings.home)
    processes = stack_status(loaded.settings.home)
    state = read_stack(loaded.settings.home)
    # The registry of the stack that runs (`slipway up --profile server` may have been given the profile on its
    # command line only), and only when something serves.
    settings = loaded.settings
    if processes and state.profile != settings.stack.profile:
        settings = settings.model_copy(update={"stack": settings.stack.model_copy(update={"profile": state.profile})})
    champion = _champion(settings, current.state.backend.model_version) if current.state else None
    if as_json:
        payload = {
            **current.model_dump(mode="json"),
            "champion": _champion_json(champion),
            "stack": [p.model_dump(mode="json") for p in processes],
            "stack_profile": state.profile if processes else None,
            "stack_databases": state.databases,
        }
        console.print(json.dumps(payload), highlight=False, soft_wrap=True)
    else:
        _print_status(current)
        if champion is not None:
            _print_champion(loaded.settings, champion)
        _print_stack(processes)
        if processes:
            console.print(f"[bold]{'profile':>14}[/]  {state.profile}", highlight=False)
        for name, url in state.databases.items() if processes else ():
            console.print(f"[bold]{name + ' db':>14}[/]  {url}", highlight=False)
    if current.condition != "serving" or not all(p.alive for p in processes):
        raise typer.Exit(1)


@app.command("stop")
def stop_cmd(env: EnvOption = None, config: ConfigOption = None) -> None:
    """Stop serving: the front stops listening and finishes the requests in flight, then every server stops."""
    settings = _load(env, config).settings
    if settings.serving.target == "remote":
        err.print(
            "[bold red]error:[/] serving.target is remote: slipway does not run that serving, so it does not stop "
            "it; scale it down on its platform (e.g. kubectl scale deployment/slipway-serving --replicas=0)",
            highlight=False,
        )
        raise typer.Exit(2)
    from tasks.deploy import serving_status

    current = serving_status(settings.home)
    if current.state is None and not current.orphans:  # nothing to stop: no flow run, no Prefect server to start
        console.print("nothing was serving", highlight=False)
        return
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


@app.command("image")
def image_cmd(
    version: Annotated[
        str | None,
        typer.Argument(help="Model version whose Bento to containerize (default: the version the champion points at)."),
    ] = None,
    dockerfile_only: Annotated[
        bool,
        typer.Option("--dockerfile-only", help="Only write the Dockerfile and its build context; build no image."),
    ] = False,
    tag: Annotated[
        str | None, typer.Option("--tag", "-t", help="Image tag (default: the Bento tag, NAME:VERSION).")
    ] = None,
    env: EnvOption = None,
    config: ConfigOption = None,
) -> None:
    """Build the container image of the champion's Bento (or VERSION's) with Docker. BentoML's Dockerfile and its
    build context are written under <project.home>/images/ first, so they are there even without a Docker engine
    (DOCKER_HOST, else the local socket); without one the command exits 1 saying so."""
    loaded = _load(env, config)
    s = loaded.settings
    console.rule(f"[bold]slipway image[/] {s.model.name} {'v' + version if version else s.promotion.champion_alias}")
    from tasks.deploy import resolve_target
    from tasks.errors import SlipwayError
    from tasks.image import build_image, connect_engine, write_build_context
    from tasks.resources import registry_from_settings

    try:
        registry = registry_from_settings(s)
        target = resolve_target.fn(registry, s.model.name, s.promotion.champion_alias, s.bentoml_home, version)
        console.print(f"Bento {target.bento.tag} ({target.reason}): writing its Dockerfile", highlight=False)
        context = write_build_context(target.bento.tag, s.bentoml_home, s.home)
        image_tag = tag or context.bento_tag
        if dockerfile_only:
            _print_image(target, context, image_tag, None)
            return
        console.print(f"Dockerfile: {context.dockerfile}", highlight=False)
        client = connect_engine(os.environ, context)
        console.print(f"building {image_tag} on {client.api.base_url}", highlight=False)
        built = build_image(
            client, context, image_tag, on_progress=lambda line: console.print(line, style="dim", markup=False)
        )
    except SlipwayError as exc:
        raise _fail(exc) from None
    _print_image(target, context, image_tag, built)


@app.command("monitor")
def monitor_cmd(
    window_minutes: Annotated[
        float | None,
        typer.Option("--window-minutes", "-w", help="Judge the last N minutes (default: monitor.window_minutes)."),
    ] = None,
    env: EnvOption = None,
    config: ConfigOption = None,
) -> None:
    """Run the monitor once: drift, data quality and latency of what serving saw, the decided action (retrain,
    roll back, redeploy or nothing, with guardrails) carried out when monitor.act is true, and the report."""
    loaded = _load(env, config)
    console.rule(f"[bold]slipway monitor[/] {loaded.settings.model.name}")
    from flows.monitor import monitor_flow
    from tasks.errors import SlipwayError

    try:
        verdict = monitor_flow(env=env, config_file=_opt(config), window_minutes=window_minutes)
    except (SlipwayError, FileNotFoundError) as exc:
        raise _fail(exc) from None
    console.print(verdict.to_markdown(), highlight=False)


@log_app.command("prune")
def log_prune(
    older_than_days: Annotated[
        float | None,
        typer.Option(
            "--older-than-days",
            help="Delete requests logged longer ago than this (default: serving.inference_log_retention_days).",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")] = False,
    env: EnvOption = None,
    config: ConfigOption = None,
) -> None:
    """Delete old requests from the inference log.

    Oldest first, in short transactions, so serving keeps logging meanwhile. Each monitor run does the same with
    serving.inference_log_retention_days; this is for doing it now."""
    if older_than_days is not None and not (math.isfinite(older_than_days) and 0 <= older_than_days <= _MAX_DAYS):
        err.print(f"--older-than-days must be a number from 0 to {_MAX_DAYS:,}, not {older_than_days}", highlight=False)
        raise typer.Exit(2)
    loaded = _load(env, config)
    s = loaded.settings
    days = older_than_days if older_than_days is not None else s.serving.inference_log_retention_days
    if days is None:
        err.print(
            "nothing to prune by: serving.inference_log_retention_days is null (keep everything); "
            "pass --older-than-days",
            highlight=False,
        )
        raise typer.Exit(2)
    from datetime import UTC, datetime, timedelta

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from serving.inference_log import InferenceLogError
    from tasks.observe import prune_inference_log

    before = datetime.now(UTC) - timedelta(days=days)
    columns = (TextColumn("deleting requests"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=dry_run) as bar:
        job = bar.add_task("prune", total=None)
        try:
            result = prune_inference_log.fn(
                s.inference_log_url,
                before,
                dry_run=dry_run,
                progress=lambda done, total: bar.update(job, completed=done, total=total),
            )
        except InferenceLogError as exc:
            raise _fail(exc) from None
    console.print(result.line(), highlight=False)


_DATETIME_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f"]
# Where a request that new_request_id named is looked for: from a minute before the time in its id (another
# host's clock) to ten minutes after (its latency, a slow worker); a row is stamped when its answer is logged.
_ID_WINDOW = (60.0, 600.0)
# Where a caller's id is looked for without --since/--until: the last day (a joined row's requests are found by
# reading every row in the range, and a busy log holds gigabytes an hour).
_CALLER_ID_DAYS = 1.0


@log_app.command("show")
def log_show(
    request_id: Annotated[str, typer.Argument(help="The request id: a response's request_id or X-Request-ID header.")],
    since: Annotated[
        datetime | None,
        typer.Option(
            formats=_DATETIME_FORMATS,
            metavar="TIME",
            help="Search rows logged from this time (UTC, e.g. 2026-12-01 or '2026-12-01 14:05:00'). Default: around "
            "the time in a request id slipway made, else the last 24 hours.",
        ),
    ] = None,
    until: Annotated[
        datetime | None,
        typer.Option(formats=_DATETIME_FORMATS, metavar="TIME", help="Search rows logged before this time (UTC)."),
    ] = None,
    rows: Annotated[int, typer.Option(min=1, help="Rows of a request shown in the table (--json gives all).")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the request and all its rows as JSON.")] = False,
    env: EnvOption = None,
    config: ConfigOption = None,
) -> None:
    """Show what serving saw and answered for one request: its features, predictions and class probabilities,
    the model version, latency and when it was logged.

    Found alone in its log row or among the requests of one model call (adaptive batching). A request id the
    service made carries its time, so only the minutes around it are read; an id a caller sent (X-Request-ID) is
    looked for in the last 24 hours, or from --since to --until."""
    from datetime import UTC, timedelta

    from serving.inference_log import InferenceLogError, find_request, safe_url
    from serving.predictor import is_request_id, request_id_time

    if not is_request_id(request_id):
        err.print(
            f"{request_id!r} is not a request id: the service keeps 1 to 128 letters, digits and ._:- "
            "(it made a new id for a request that sent another X-Request-ID)",
            highlight=False,
        )
        raise typer.Exit(2)
    s = _load(env, config).settings
    made = request_id_time(request_id)
    if since is None and until is None:
        if made is not None:
            since, until = made - timedelta(seconds=_ID_WINDOW[0]), made + timedelta(seconds=_ID_WINDOW[1])
        else:
            since = datetime.now(UTC) - timedelta(days=_CALLER_ID_DAYS)
    since, until = (None if t is None else t if t.tzinfo else t.replace(tzinfo=UTC) for t in (since, until))
    try:
        frame = find_request(s.inference_log_url, request_id, since, until)
    except InferenceLogError as exc:
        raise _fail(exc) from None
    if frame.empty:
        between = "".join(
            (
                f" logged from {since:%Y-%m-%d %H:%M:%S} UTC" if since else "",
                f" before {until:%Y-%m-%d %H:%M:%S} UTC" if until else "",
            )
        )
        wider = "" if made is not None else " (--since and --until search another range)"
        err.print(
            f"no request {request_id}{between} in the inference log at {safe_url(s.inference_log_url)}{wider}",
            highlight=False,
        )
        raise typer.Exit(1)
    calls = [part for _, part in frame.groupby(["ts", "model_version"], sort=True)]
    if as_json:
        console.print_json(json.dumps([_logged_call(part) for part in calls], default=str))
        return
    for part in calls:
        _print_logged_call(request_id, part, rows)


_LOG_META = ("ts", "model_version", "request_id", "latency_ms")


def _logged_call(part: Any) -> dict[str, Any]:
    """One logging of a request (a caller can send one X-Request-ID twice) as JSON-ready values."""
    first = part.iloc[0]
    records = part.drop(columns=list(_LOG_META)).to_dict(orient="records")
    return {
        "request_id": first["request_id"],
        "model_version": first["model_version"],
        "logged_at": first["ts"].isoformat(),
        "latency_ms": float(first["latency_ms"]),
        "rows": [{key: value for key, value in record.items() if not _is_missing(value)} for record in records],
    }


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _print_logged_call(request_id: str, part: Any, asked: int) -> None:
    """The request's line, then a table of its rows side by side: a line per feature, the prediction and a line
    per class probability (in the model's class order). As many rows as asked for and as fit the terminal
    (a cell is never folded over lines); the rest are counted."""
    first = part.iloc[0]
    n = len(part)
    console.print(
        f"[bold]request {request_id}[/]: {n} row{'s' if n != 1 else ''}, model version {first['model_version']}, "
        f"logged {first['ts']:%Y-%m-%d %H:%M:%S.%f} UTC, latency {first['latency_ms']:.2f} ms",
        highlight=False,
    )
    head = part.head(asked)
    names = [c for c in part.columns if c not in (*_LOG_META, "prediction", "probabilities")]
    # Text, not markup: a feature may be called "x[0]" or "[b]".
    lines = [(Text(name), [_cell(value) for value in head[name]]) for name in names]
    lines.append((Text("prediction", style="green"), [_cell(value) for value in head["prediction"]]))
    classes = max((len(value) for value in head["probabilities"] if isinstance(value, list)), default=0)
    for k in range(classes):
        cells = [_cell(v[k]) if isinstance(v, list) and k < len(v) else "-" for v in head["probabilities"]]
        lines.append((Text(f"probabilities[{k}]", style="green"), cells))
    label_width = max(len(label) for label in ["feature", *(label.plain for label, _ in lines)])
    cell_width = max(len(cell) for _, cells in lines for cell in [*cells, f"row {len(head) - 1}"])
    shown = max(1, min(len(head), (console.width - label_width) // (cell_width + 2)))
    table = Table(box=None, pad_edge=False)
    table.add_column("feature", style="bold", no_wrap=True, min_width=label_width)
    for i in range(shown):
        table.add_column(f"row {i}", no_wrap=True, min_width=cell_width)
    for label, cells in lines:
        table.add_row(label, *(Text(cell) for cell in cells[:shown]))
    console.print(table)
    if n > shown:
        more = n - shown
        console.print(
            f"... {more} more row{'s' if more != 1 else ''}: "
            f"--rows {n} (as many as the terminal is wide for), or --json",
            highlight=False,
        )


def _cell(value: Any) -> str:
    if _is_missing(value):
        return "-"
    return f"{value:.5g}" if isinstance(value, float) else str(value)  # --json has every digit


@app.command("sync")
def sync_cmd(env: EnvOption = None, config: ConfigOption = None) -> None:
    """Make serving follow the champion alias: an alias moved in the MLflow UI is recorded in the history as a
    manual move and deployed. Starts nothing when nothing is serving."""
    _load(env, config)
    from flows.sync import sync_flow
    from tasks.errors import SlipwayError

    try:
        result = sync_flow(env=env, config_file=_opt(config))
    except SlipwayError as exc:
        raise _fail(exc) from None
    console.print(result.detail, highlight=False)


@app.command("report")
def report_cmd(
    latest: Annotated[bool, typer.Option("--latest", help="Open the newest report (HTML) instead of listing.")] = False,
    limit: Annotated[int, typer.Option(help="How many recent verdicts to list.")] = 20,
    env: EnvOption = None,
    config: ConfigOption = None,
) -> None:
    """List recent monitor verdicts with the path of each report; --latest opens the newest one."""
    loaded = _load(env, config)
    from tasks.observe import read_verdicts

    records = read_verdicts(loaded.settings.monitor_dir)
    if not records:
        console.print(f"no monitor verdicts yet in {loaded.settings.monitor_dir} (`slipway monitor` runs one)")
        raise typer.Exit(1)
    if latest:
        newest = records[-1]
        target = newest.html or newest.report_dir / "verdict.md"
        console.print(f"{newest.decided_at:%Y-%m-%d %H:%M:%S} UTC {newest.status} -> {newest.action}", highlight=False)
        console.print(str(target), highlight=False, soft_wrap=True)
        if os.environ.get("SLIPWAY_NO_BROWSER") != "1":
            import webbrowser

            webbrowser.open(target.resolve().as_uri())
        return
    shown = records[-limit:]
    paths = [_relative(record.html or record.report_dir) for record in shown]
    rows = [
        (
            f"{record.decided_at:%Y-%m-%d %H:%M:%S}",
            record.model_version or "-",
            record.status,
            record.action,
            str(record.rows),
            f"{record.drift_share:.2f}" if record.drift_share is not None else "-",
        )
        for record in shown
    ]
    title = f"monitor verdicts ({loaded.settings.model.name})"
    if console.width >= 76 + max(map(len, paths)):  # room for the table with every path on one line
        table = _table(title, "decided (UTC)", "version", "status", "action", "rows", "drift share", "report")
        for row, path in zip(rows, paths, strict=True):
            table.add_row(*row, path)
        console.print(table)
        return
    # Narrow (a pipe or `make` is 80 columns): one line per verdict and its report under it, whole, to copy.
    console.print(f"[bold]{title}[/]\ntimes in UTC; drift: the share of columns drifting", highlight=False)
    for (decided, version, status, action, n_rows, share), path in zip(rows, paths, strict=True):
        console.print(
            f"{decided}  v{version:<4} {status:<7} {action:<10} {n_rows:>7} rows  drift {share}", highlight=False
        )
        console.print(f"    {path}", highlight=False, soft_wrap=True)


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


def _remote_status(s: Settings, as_json: bool) -> int:
    """`slipway status` for remote serving: 0 when serving.remote.url is ready and reports one version."""
    from tasks.remote import remote_view
    from tasks.served import api_key

    assert s.serving.remote is not None
    view = remote_view.fn(s.serving.remote, s.model.name, api_key(s))
    champion = _champion(s, view.model_version) if view.model_version else None
    if as_json:
        extra = {"target": "remote", "champion": _champion_json(champion)}
        console.print(json.dumps(view.model_dump(mode="json") | extra), highlight=False)
    else:
        colour = {"serving": "green", "unhealthy": "yellow", "unreachable": "red"}[view.condition]
        console.print(f"[bold]{'status':>14}[/]  [bold {colour}]{view.condition}[/] (remote)", highlight=False)
        version = f"v{view.model_version}" if view.model_version else "unknown"
        console.print(f"[bold]{'model':>14}[/]  {s.model.name} {version}", highlight=False)
        console.print(f"[bold]{'URL':>14}[/]  {view.url}/predict", highlight=False)
        console.print(f"[bold]{'detail':>14}[/]  {view.detail}", highlight=False)
        if champion is not None:
            _print_champion(s, champion)
    return 0 if view.condition == "serving" and view.model_version else 1


def _champion(s: Settings, serving_version: str | None) -> ChampionView:
    """What the champion alias points at, next to the version serving (which `slipway sync` makes it follow)."""
    from tasks.resources import registry_from_settings
    from tasks.served import champion_view

    return champion_view(registry_from_settings(s), s.model.name, s.promotion.champion_alias, serving_version)


def _champion_json(champion: ChampionView | None) -> dict[str, Any] | None:
    return None if champion is None else champion.model_dump(mode="json") | {"serving_champion": champion.matches}


def _print_champion(s: Settings, champion: ChampionView) -> None:
    line = champion.line(s.monitor.sync_interval_s)  # plain text: printed as is, never read as markup
    style = "bold yellow" if champion.behind else ""
    console.print(Text.assemble((f"{s.promotion.champion_alias:>14}", "bold"), "  ", (line, style)), highlight=False)


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


def _print_image(target: DeployTarget, context: ImageContext, image_tag: str, built: ImageBuild | None) -> None:
    bento = target.bento
    outcome = f"[bold green]image {built.image_tag}[/]" if built else "[bold green]Dockerfile written[/]"
    console.rule(f"{bento.model_name} v{bento.model_version}: {outcome}")
    rows: list[tuple[str, Any]] = [
        ("Bento", f"{bento.tag}  ({target.reason})"),
        ("Dockerfile", f"{context.dockerfile}  (FROM {context.base_image})"),
        ("ports", ", ".join(str(port) for port in context.ports) or "none exposed"),
        ("context", str(context.folder)),
    ]
    if built:
        rows += [
            ("image", f"{built.image_tag}  {built.image_id}"),
            ("took", f"{built.seconds:.1f} s on {built.engine}"),
            ("next", f"docker run --rm -p 3000:3000 {built.image_tag}"),
        ]
    else:
        rows.append(("next", context.build_command(image_tag)))
    for label, value in rows:
        console.print(f"[bold]{label:>14}[/]  {value}", highlight=False)


ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile",
        help="embedded: Prefect and MLflow on SQLite, one deployments process. server: MLflow and Prefect servers on "
        "PostgreSQL (stack.postgres_url), infra/prefect.yaml's deployments and a process worker. Default: "
        "stack.profile.",
    ),
]


@app.command()
def up(env: EnvOption = None, config: ConfigOption = None, profile: ProfileOption = None) -> None:
    """Run slipway as a local service on 127.0.0.1: the Prefect server (stack.prefect_port), MLflow
    (stack.mlflow_port), the champion's endpoint (serving.port, when there is a champion) and what runs the
    deployments monitor (monitor.schedule_cron), sync (every monitor.sync_interval_s) and train (on demand): one
    process serving them (profile embedded) or a Prefect process worker (profile server, with MLflow and Prefect on
    PostgreSQL). What runs already is reported and left alone. `slipway status` shows it all, `slipway down`
    stops it."""
    loaded = _load(env, config)
    s = loaded.settings
    if profile is not None:
        if profile not in ("embedded", "server"):
            err.print(f"--profile must be embedded or server, not {profile!r}", highlight=False)
            raise typer.Exit(2)
        s = s.model_copy(update={"stack": s.stack.model_copy(update={"profile": profile})})
    server = s.stack.profile == "server"
    console.rule(f"[bold]slipway up[/] {s.model.name} ({s.stack.profile})")
    from flows.serve import deployment_specs
    from tasks import stack
    from tasks.errors import SlipwayError

    specs = deployment_specs(s.monitor)
    mlflow_url = f"http://{stack.HOST}:{s.stack.mlflow_port}"
    databases: list[Any] = []
    try:
        with stack.stack_lock(s.home):
            for gone in stack.clear_stale(s.home):
                console.print(f"{'cleared':>11}  {gone.title} (pid {gone.pid}) had stopped", highlight=False)
            stack.check_profile(s.home, s.stack.profile)
            if server:
                databases = stack.ensure_databases(s)
                for database in databases:
                    what = "created" if database.created else "exists"
                    console.print(f"{what:>11}  {database.name} database {database.url}", highlight=False)
            servers = stack.servers(s)
            stack.check_ports(s.home, servers)  # before anything starts: all or nothing
            launches = [stack.start_component(s.home, spec, s.stack.profile) for spec in servers]  # both at once
            for launch in launches:
                _print_launch(launch, None)
            for spec, launch in zip(servers, launches, strict=True):
                _print_launch(launch, stack.wait_ready(s.home, launch, spec))
            if server:
                stack.record_databases(s.home, databases)
                _start_worker(s, env, config)
            endpoint, serving_failed = _serve_champion(s)
            if not server:
                spec = stack.deployments_process(s, env, config, Path.cwd())
                launch = stack.start_component(s.home, spec)
                _print_launch(launch, None)
                polled = stack.deployments_polled(
                    stack.prefect_api_url(s), tuple(d.name for d in specs), launch.process.started_at
                )
                _print_launch(launch, stack.wait_ready(s.home, launch, spec, polled))
    except SlipwayError as exc:
        err.print("what did start keeps running: `slipway status` shows it, `slipway down` stops it", highlight=False)
        raise _fail(exc) from None
    schedules = ", ".join(
        f"{d.name} ({f'cron {d.cron}' if d.cron else f'every {d.interval_s:g} s' if d.interval_s else 'on demand'})"
        for d in specs
    )
    if server:  # the worker runs what infra/prefect.yaml declares, schedules included
        declared = stack.declared_deployments()
        if declared.schedule_line() != f"{schedules} on work pool {declared.work_pool}":
            err.print(
                f"[yellow]note[/]: the config's schedules ({schedules}) differ from {declared.path}'s; the worker "
                "runs the file's (edit it, then `slipway down` and `slipway up --profile server`)",
                highlight=False,
            )
        schedules = declared.schedule_line()
    console.rule("[bold green]slipway is up[/]" if endpoint else "[bold yellow]slipway is up, not serving[/]")
    rows: list[tuple[str, Any]] = [
        ("Prefect UI", f"http://{stack.HOST}:{s.stack.prefect_port}"),
        ("MLflow " + ("server" if server else "UI"), mlflow_url),
        ("endpoint", f"{endpoint}/predict" if endpoint else "not serving"),
        ("deployments", schedules),
        ("run train", f"PREFECT_API_URL={stack.prefect_api_url(s)} prefect deployment run train/train"),
    ]
    if server:
        rows += [(f"{d.name} db", d.url) for d in databases]
        rows.append(("artifacts", f"{s.artifact_root} (proxied: clients use mlflow-artifacts:/ through {mlflow_url})"))
        if loaded.settings.tracking_uri != s.tracking_uri:  # --profile server, but the config says otherwise
            rows.append(
                (
                    "clients",
                    "set SLIPWAY__STACK__PROFILE=server (or stack.profile: server in the config) so "
                    f"`slipway` commands use {mlflow_url} too",
                )
            )
        elif s.tracking_uri != mlflow_url:
            rows.append(("clients", f"[yellow]mlflow.tracking_uri is {s.tracking_uri}, not this server[/]"))
    rows += [("logs", str(s.home / "logs")), ("next", "slipway status | slipway down")]
    for label, value in rows:
        console.print(f"[bold]{label:>14}[/]  {value}", highlight=False)
    if serving_failed:
        raise typer.Exit(1)  # there is a champion and it could not be served: the error is printed above


def _start_worker(s: Settings, env: str | None, config: Path | None) -> None:
    """`up --profile server`: the process worker of infra/prefect.yaml's work pool (it creates the pool), then the
    deployments registered from that file, unless the worker was running already and they all exist."""
    import time

    from tasks import stack

    declared = stack.declared_deployments()
    spec = stack.prefect_worker(s, declared.work_pool, env)
    launch = stack.start_component(s.home, spec, "server")
    _print_launch(launch, None)
    polling = stack.worker_polling(
        stack.prefect_api_url(s), declared.work_pool, stack.worker_name(), launch.process.started_at
    )
    _print_launch(launch, stack.wait_ready(s.home, launch, spec, polling))
    existing = {d["name"] for d in stack.list_deployments(stack.prefect_api_url(s), declared.names)}
    if not launch.started and existing >= set(declared.names):
        console.print(f"[yellow]{'registered':>11}[/]  {', '.join(declared.names)}, left alone", highlight=False)
        return
    console.print(f"{'deploying':>11}  prefect deploy --all --prefect-file {declared.path}", highlight=False)
    started = time.monotonic()
    parameters = {"env": env, "config_file": str(config.resolve()) if config else None}
    registered = stack.register_deployments(s, declared, s.home / "logs" / "deploy.log", parameters)
    console.print(
        f"[green]{'registered':>11}[/]  {', '.join(d['name'] for d in registered)} on work pool "
        f"{declared.work_pool} in {time.monotonic() - started:.1f} s",
        highlight=False,
    )


@app.command()
def down(env: EnvOption = None, config: ConfigOption = None) -> None:
    """Stop what `slipway up` started, in a safe order: the deployments process or the worker first (a run in
    progress stops with it), then serving (after the requests in flight), MLflow, and the Prefect server last.
    The server profile's PostgreSQL databases are kept: the next `slipway up --profile server` finds them."""
    loaded = _load(env, config)
    s = loaded.settings
    from tasks import stack
    from tasks.deploy import stop_serving
    from tasks.errors import SlipwayError

    grace = s.stack.stop_grace_s
    stopped: list[str] = []
    failures: list[SlipwayError] = []

    def stop(name: str) -> None:
        try:
            process = stack.stop_component(s.home, name, grace)
        except SlipwayError as exc:  # the next ones are still stopped; the error is reported at the end
            failures.append(exc)
            return
        if process is not None:
            stopped.append(f"{process.title} (pid {process.pid}) on {process.url}")

    with stack.stack_lock(s.home):
        # The deployments first, with SIGTERM: a serve() process ignores SIGINT while a run is active, and one
        # whose Prefect server is gone hangs retrying it. The Prefect server last: the others report to it.
        stop(stack.DEPLOYMENTS)
        stop(stack.WORKER)  # the same for the server profile's worker, whose flow runs hang from it
        try:
            stopped.extend(stop_serving.fn(s.home, grace_s=grace).stopped)
        except SlipwayError as exc:
            failures.append(exc)
        stop(stack.MLFLOW)
        stop(stack.PREFECT)
    if not stopped and not failures:
        console.print("nothing was running", highlight=False)
    for line in stopped:
        console.print(f"[bold]stopped[/]  {line}", highlight=False)
    if failures:
        for failure in failures[1:]:
            err.print(f"[bold red]{type(failure).__name__}[/]: {failure}", highlight=False)
        raise _fail(failures[0])


def _serve_champion(s: Settings) -> tuple[str | None, bool]:
    """`slipway up`'s serving step: the endpoint URL (None when nothing serves) and whether serving failed."""
    from tasks.deploy import deploy_bento, resolve_target, serving_status
    from tasks.errors import SlipwayError
    from tasks.resources import registry_from_settings

    if s.serving.target == "remote":
        assert s.serving.remote is not None
        console.print(
            f"[yellow]{'skipped':>11}[/]  serving: serving.target is remote ({s.serving.remote.url}); the sync "
            "deployment keeps it on the champion through serving.remote.deploy_command",
            highlight=False,
        )
        return s.serving.remote.url, False
    current = serving_status(s.home)
    if current.condition == "serving" and current.state is not None:
        backend = current.state.backend
        console.print(
            f"[yellow]{'running':>11}[/]  serving {backend.model_name} v{backend.model_version} on "
            f"{current.state.front.url} (pid {current.state.front.pid}), left alone",
            highlight=False,
        )
        return current.state.front.url, False
    registry = registry_from_settings(s)
    if s.promotion.champion_alias not in registry.aliases(s.model.name):
        console.print(
            f"[yellow]{'skipped':>11}[/]  serving: {s.model.name} has no {s.promotion.champion_alias} yet "
            "(`slipway train` releases one; `slipway deploy` serves it, and from then on the sync deployment "
            "keeps serving the champion)",
            highlight=False,
        )
        return None, False
    try:
        target = resolve_target.fn(registry, s.model.name, s.promotion.champion_alias, s.bentoml_home)
        console.print(f"{'starting':>11}  serving {target.bento.tag} ({target.reason})", highlight=False)
        result = deploy_bento.fn(target.bento.tag, s.serving, s.home, s.bentoml_home, s.inference_log_url)
    except SlipwayError as exc:
        err.print(f"[bold red]{'failed':>11}[/]  serving: {type(exc).__name__}: {exc}", highlight=False)
        return None, True
    console.print(
        f"[green]{'started':>11}[/]  serving {target.bento.tag} on {result.url} (ready in {result.ready_s:.1f} s)",
        highlight=False,
    )
    return result.url, False


def _print_launch(launch: Launch, ready_s: float | None) -> None:
    process = launch.process
    where = f"{process.url}  pid {process.pid}"
    if not launch.started:
        if ready_s is not None:
            console.print(f"[yellow]{'running':>11}[/]  {process.title}  {where}, left alone", highlight=False)
    elif ready_s is None:
        console.print(f"{'starting':>11}  {process.title}  {where}  (log: {process.log_path})", highlight=False)
    else:
        console.print(f"[green]{'ready':>11}[/]  {process.title}  {where}  in {ready_s:.1f} s", highlight=False)


def _print_stack(processes: list[ComponentStatus]) -> None:
    if not processes:
        console.print(f"[bold]{'stack':>14}[/]  not started (`slipway up` starts it)", highlight=False)
        return
    for status in processes:
        process = status.process
        if not status.alive:
            state = "[red]dead[/]"
        elif status.healthy is False:
            state = f"[yellow]alive, not answering {process.health_url}[/]"
        else:
            state = "[green]alive[/]"
        children = len(status.pids) - (1 if status.alive else 0)  # a serving process's children are its flow runs
        extra = f", {children} more process{'es' if children > 1 else ''} in its group" if children else ""
        where = f"{process.url}  (log: {process.log_path})"
        console.print(f"[bold]{process.title:>14}[/]  {state}  pid {process.pid}{extra}  {where}", highlight=False)


class _DomainErrorsWithoutTraceback(logging.Filter):
    """Prefect logs a failed flow or task run's exception with its traceback. For slipway's own errors (no such
    version, a failed gate, a refused rollback) the message says everything, and the command prints it once more
    as its last line: keep Prefect's line, drop the 20 lines of stack. Other exceptions keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from tasks.errors import SlipwayError

        if record.exc_info and isinstance(record.exc_info[1], SlipwayError):
            record.exc_info = None
            record.exc_text = None
        return True


def main() -> None:
    """Console-script entry point."""
    quiet = _DomainErrorsWithoutTraceback()
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(quiet)
    app(prog_name="slipway")


if __name__ == "__main__":
    main()
