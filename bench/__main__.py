"""`python -m bench [serving]`: run the serving benchmark (the default) and print where the raw results are."""

from __future__ import annotations

import dataclasses
import signal
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, help="slipway benchmarks, each against peers measured in the same run.")


def _exit_on_sigterm(signum: int, frame: object) -> NoReturn:
    # SystemExit unwinds the `finally` blocks that stop the servers this run started.
    sys.exit(128 + signum)


@app.callback(invoke_without_command=True)
def main(ctx: typer.Context) -> None:
    """Without a command, run the serving benchmark with its defaults."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(serving)


@app.command()
def serving(
    workers: Annotated[int, typer.Option(help="Worker processes of slipway and both MLflow peers.", min=1)] = 2,
    threads: Annotated[int, typer.Option(help="wrk threads.", min=1)] = 2,
    connections: Annotated[int, typer.Option(help="wrk open connections.", min=1)] = 32,
    duration: Annotated[float, typer.Option(help="Seconds of measured load per case.", min=1)] = 10.0,
    warmup: Annotated[float, typer.Option(help="Seconds of unmeasured load before each case.", min=1)] = 2.0,
    floor_seconds: Annotated[float, typer.Option(help="Seconds of in-process timing per batch size.", min=0.5)] = 3.0,
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="Benchmark model (repeatable), each measured in a run of its own: example (the model `make demo` "
            "releases, a 120-tree gradient-boosted ensemble) and mlp (examples/mlp.yaml: the same features, a small "
            "neural network whose model call is cheap, so the request path is what is measured). Default: both.",
        ),
    ] = None,
    peer: Annotated[
        list[str] | None,
        typer.Option(
            help="Run only these peers (repeatable): slipway, slipway-logged (inference log on), mlflow-onnx, "
            "mlflow-sklearn, asgi-limit."
        ),
    ] = None,
    slipway_body: Annotated[
        str,
        typer.Option(
            help="Body form for slipway, slipway-logged and the ASGI limit: auto (its fastest: records for one row, "
            "columns for 100 rows), records or columns."
        ),
    ] = "auto",
    mlflow_onnx_body: Annotated[
        str, typer.Option(help="Body form for the MLflow ONNX flavor: auto (its fastest), inputs, records or split.")
    ] = "auto",
    mlflow_sklearn_body: Annotated[
        str, typer.Option(help="Body form for the MLflow sklearn flavor: auto (its fastest), inputs, records or split.")
    ] = "auto",
    quiet_threshold: Annotated[
        float,
        typer.Option(help="Before each case, wait until other work uses less than this share of the machine.", min=0),
    ] = 0.10,
    quiet_budget: Annotated[
        float, typer.Option(help="Seconds the whole run may spend waiting for a quiet machine.", min=0)
    ] = 45.0,
    nice: Annotated[
        int,
        typer.Option(
            help="Scheduling niceness of this run and every server and wrk it starts (-20..19; below 0 needs root). "
            "On a shared machine, -10 makes other work yield to the benchmark.",
            min=-20,
            max=19,
        ),
    ] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Where to write the raw results (default: a file in the temp dir).")
    ] = None,
    keep_workdir: Annotated[bool, typer.Option(help="Keep the temp folder with server logs and stores.")] = False,
    log_rounds: Annotated[
        int,
        typer.Option(
            help="Rounds that price the inference log: slipway and slipway-logged loaded in turn per case, the cost "
            "the median of the per-round ratios (0: price it from their single cases in the table).",
            min=0,
        ),
    ] = 7,
    log_round_seconds: Annotated[
        float, typer.Option(help="Seconds of measured load per server in each paired round.", min=1)
    ] = 4.0,
    log_url: Annotated[
        str | None,
        typer.Option(
            help="A PostgreSQL server for slipway-logged's inference log (the production store), e.g. "
            "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres: the run creates a database of its own there and "
            "drops it at the end. Default: a SQLite file in the work folder (the embedded default).",
        ),
    ] = None,
    access_log: Annotated[
        bool,
        typer.Option(
            help="Per-request access logs of slipway (BentoML's, SLIPWAY_ACCESS_LOG) and of both MLflow peers "
            "(uvicorn's, UVICORN_ACCESS_LOG), alike: on as each ships by default; off as `slipway deploy` runs its "
            "backends (HAProxy logs in front of them).",
        ),
    ] = True,
) -> None:
    """slipway's endpoint vs `mlflow models serve` (sklearn and onnx flavors), the in-process floor and a bare ASGI
    limit: same model, same rows, same wrk load; each server measured alone on 127.0.0.1."""
    from bench.model import BENCH_MODELS
    from bench.processes import BenchError
    from bench.serving import PEER_NAMES, ServingOptions, run_serving_benchmark

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    models = list(dict.fromkeys(model or BENCH_MODELS))
    unknown = [name for name in models if name not in BENCH_MODELS]
    if unknown:
        raise typer.BadParameter(f"unknown model(s) {unknown}; choose from {list(BENCH_MODELS)}", param_hint="--model")
    base = ServingOptions(
        workers=workers,
        threads=threads,
        connections=connections,
        duration_s=duration,
        warmup_s=warmup,
        floor_s=floor_seconds,
        peers=tuple(peer) if peer else PEER_NAMES,
        slipway_form=slipway_body,
        mlflow_onnx_form=mlflow_onnx_body,
        mlflow_sklearn_form=mlflow_sklearn_body,
        quiet_threshold=quiet_threshold,
        quiet_budget_s=quiet_budget,
        nice=nice,
        json_path=json_out,
        keep_workdir=keep_workdir,
        log_rounds=log_rounds,
        log_round_s=log_round_seconds,
        access_log=access_log,
        log_url=log_url,
    )
    # Not a terminal (make, CI, a log file): wide enough that the tables are not cut.
    console = Console(width=None if sys.stdout.isatty() else 170)
    written: list[Path] = []
    for name in models:
        # One JSON per model: with --json and several models, the model's name goes before the suffix.
        json_path = json_out.with_stem(f"{json_out.stem}-{name}") if json_out and len(models) > 1 else json_out
        options = dataclasses.replace(base, model=name, json_path=json_path)
        try:
            written.append(run_serving_benchmark(options, console)[1])
        except BenchError as exc:
            console.print(f"[red]benchmark of model {name!r} failed:[/] {exc}")
            raise typer.Exit(1) from None
    if len(written) > 1:
        console.print("\nraw results, one file per model: " + ", ".join(str(path) for path in written))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def monitor(ctx: typer.Context) -> None:
    """The monitor compute benchmark (bench/monitor.py); its own options pass through (`monitor --help`)."""
    from bench.monitor import main as monitor_main

    raise typer.Exit(monitor_main(list(ctx.args)))


if __name__ == "__main__":
    app()
