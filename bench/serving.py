"""The serving benchmark: slipway's endpoint against MLflow's two serving flavors, the in-process floor and a
bare-ASGI limit, on the same model, rows and load generator, in one run.

Every server is started here on a free 127.0.0.1 port. They start together (MLflow's imports take most of a
minute; overlapping them keeps the run short) and then idle; one at a time, each is checked to answer what
in-process ONNX Runtime (or the fitted model) answers, loaded with wrk, measured, and stopped. Before each case
the run waits (within a budget) for the machine to be quiet, and each case records the share of the machine
other work took, so a reader can see which figures a neighbour disturbed. slipway runs twice: as shipped, and
with its inference log writing every served row to a SQLite file (slipway-logged), to price the log. All
state (model, BentoML homes, MLflow store, logs, request bodies) lives in one temp folder, removed at the end
unless asked to keep it.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from bench.cpu import CpuAccount, CpuUse, QuietWaiter
from bench.floor import FloorResult, measure_floor
from bench.loadgen import Load, LoadResult, find_wrk, run_wrk
from bench.model import BenchModel, prepare_model, reference_predictions
from bench.paired import PairedLogCost, measure_paired
from bench.peers import (
    MLFLOW_FORMS,
    SLIPWAY_FORMS,
    Peer,
    asgi_limit_peer,
    build_slipway_bento,
    check_answers,
    log_mlflow_models,
    mlflow_onnx_peer,
    mlflow_sklearn_peer,
    slipway_peer,
)
from bench.processes import (
    BenchError,
    Memory,
    PeakMemory,
    Server,
    free_port,
    start_server,
    stop_process_group,
    tree_memory,
    wait_all_ready,
)

PEER_NAMES = ("slipway", "slipway-logged", "mlflow-onnx", "mlflow-sklearn", "asgi-limit")
BATCH_SIZES = (1, 100)
SERVER_START_TIMEOUT_S = 180.0
# Targets from the issue, checked (never assumed) against what this run measured.
TARGET_VS_ONNX = 3.0
TARGET_VS_SKLEARN = 15.0
TARGET_SEQUENTIAL_P50_MS = 1.5
TARGET_INFERENCE_LOG_COST = 0.10  # the inference log may cost at most this share of slipway's req/s
# Other work above this share of the machine during a case is flagged in the table.
NOISY_SHARE = 0.10
# Under 32 connections every two-worker peer used 76-95% of the machine in stop 23's runs, nearly all its workers
# could use beside wrk (BENCHMARKS.md); under this share of that, a worker sat idle (CpuUse.underused) and the
# case is measured again.
UNDERUSED_SHARE = 0.70


@dataclass(frozen=True)
class ServingOptions:
    """What to run and how hard; the defaults are the issue's protocol."""

    workers: int = 2
    threads: int = 2
    connections: int = 32
    duration_s: float = 10.0
    warmup_s: float = 2.0
    floor_s: float = 3.0
    peers: tuple[str, ...] = PEER_NAMES
    slipway_form: str = "auto"
    mlflow_onnx_form: str = "auto"
    mlflow_sklearn_form: str = "auto"
    quiet_threshold: float = 0.10
    quiet_budget_s: float = 45.0
    nice: int = 0
    json_path: Path | None = None
    keep_workdir: bool = False
    log_rounds: int = 7  # paired rounds pricing the inference log (bench.paired); 0: price it from the table
    log_round_s: float = 4.0
    access_log: bool = True  # slipway's and the MLflow peers' per-request access logs, alike (bench.peers)
    log_url: str | None = None  # slipway-logged's store: None, a SQLite file in the work folder; or a PostgreSQL server
    model: str = "example"  # a key of bench.model.BENCH_MODELS


@dataclass(frozen=True)
class CaseResult:
    """One peer under one load: throughput, latency, failures and memory."""

    peer: str
    workers: int
    rows_per_request: int
    connections: int
    threads: int
    body_form: str
    body_bytes: int
    load: LoadResult
    rows_per_s: float
    memory_end: Memory
    peak_rss_mib: float
    cpu: CpuUse
    quiet_wait_s: float
    attempts: int
    disturbed: bool  # see CpuUse.disturbed
    underused: bool  # see CpuUse.underused: a worker idle in every run; its req/s flatters the ratios against it
    inference_log: InferenceLogTotals | None = None  # slipway-logged only


@dataclass(frozen=True)
class InferenceLogTotals:
    """What slipway-logged's inference log did since the server started (its /metrics, summed over workers),
    read once its queue was empty after a case: every row served must be written, none dropped."""

    rows_written: int
    rows_dropped: int
    queue_rows: int  # still queued when the wait for the writer ended (0: it kept up)
    drain_wait_s: float


@dataclass(frozen=True)
class SequentialResult:
    """slipway's endpoint with one connection: latency without queueing."""

    load: LoadResult
    cpu: CpuUse
    quiet_wait_s: float
    attempts: int
    disturbed: bool


@dataclass(frozen=True)
class PeerRun:
    """One peer's server: what it is, how long it took to be ready, and its cases."""

    name: str
    description: str
    workers: int
    start_seconds: float
    notes: tuple[str, ...]
    cases: tuple[CaseResult, ...]


@dataclass(frozen=True)
class Target:
    """One target of the issue and whether this run met it."""

    name: str
    wanted: str
    measured: str
    met: bool | None  # None: a peer it needs was not run
    resolved: bool = True  # False: the run's own spread puts the target on both sides (the paired log rounds)


@dataclass(frozen=True)
class ServingReport:
    meta: dict[str, Any]
    model: dict[str, Any]
    floor: tuple[FloorResult, ...]
    peers: tuple[PeerRun, ...]
    sequential: SequentialResult | None
    ratios: dict[str, dict[str, float | None]]
    targets: tuple[Target, ...]
    quiet_wait_total_s: float
    log_cost: tuple[PairedLogCost, ...] = ()  # the inference log priced in paired rounds, per batch size
    log_totals_after_rounds: InferenceLogTotals | None = None


def run_serving_benchmark(options: ServingOptions, console: Console) -> tuple[ServingReport, Path]:
    """Run every selected peer and the floor; print the tables; write the JSON; return the report and its path."""
    unknown = set(options.peers) - set(PEER_NAMES)
    if unknown:
        raise BenchError(f"unknown peer(s) {sorted(unknown)}; choose from {list(PEER_NAMES)}")
    for form in (options.mlflow_onnx_form, options.mlflow_sklearn_form):
        if form not in MLFLOW_FORMS:
            raise BenchError(f"unknown MLflow body form {form!r}; choose one of {list(MLFLOW_FORMS)}")
    if options.slipway_form not in SLIPWAY_FORMS:
        raise BenchError(f"unknown slipway body form {options.slipway_form!r}; choose one of {list(SLIPWAY_FORMS)}")
    find_wrk()  # fail before minutes of preparation, not after
    if options.nice:
        # Inherited by every server and wrk this run starts: on a shared machine, other work yields to the run.
        try:
            os.setpriority(os.PRIO_PROCESS, 0, options.nice)
        except PermissionError:
            raise BenchError(f"--nice {options.nice} needs root (or CAP_SYS_NICE) for values below 0") from None
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="slipway-bench-"))
    console.print(f"[bold]slipway serving benchmark[/] - work folder {workdir}")
    try:
        with inference_log_store(options.log_url, workdir) as log_url:
            report = _run(options, workdir, console, started, log_url)
    finally:
        if options.keep_workdir:
            console.print(f"kept the work folder (servers' logs, bodies, stores): {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(report, console)
    path = options.json_path or _default_json_path(report.meta["started_utc"], options.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report_json(report), indent=2), encoding="utf-8")
    console.print(f"\nraw results (JSON): {path}")
    console.print(f"total time: {time.perf_counter() - started:.0f} s")
    return report, path


@contextmanager
def inference_log_store(server_url: str | None, workdir: Path) -> Iterator[str]:
    """slipway-logged's inference log URL: a SQLite file in the work folder, or with `server_url` (a PostgreSQL
    server, the production store) a database of its own created there now and dropped at the end."""
    if server_url is None:
        yield f"sqlite:///{workdir / 'inference_log.db'}"
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    from serving.inference_log import safe_url

    parsed = make_url(server_url)
    if parsed.get_backend_name() != "postgresql":
        raise BenchError(
            f"--log-url must name a PostgreSQL server (postgresql+psycopg2://...), not {parsed.drivername}"
        )
    name = f"slipway_bench_{secrets.token_hex(4)}"
    admin = create_engine(parsed, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        try:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        except DBAPIError as exc:
            raise BenchError(f"cannot create a database on {safe_url(parsed)}: {str(exc.orig).strip()}") from None
        try:
            yield parsed.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _run(options: ServingOptions, workdir: Path, console: Console, started: float, log_url: str) -> ServingReport:
    tmp = workdir / "tmp"
    tmp.mkdir()
    meta = _meta(options)
    step = _Steps(console, started)

    step(f"training the benchmark model {options.model!r} and converting it with tasks.convert")
    model = prepare_model(workdir, options.model)
    references = {rows: reference_predictions(model, rows) for rows in BATCH_SIZES}
    sklearn_labels = {rows: np.asarray(model.estimator.predict(model.batch(rows))) for rows in BATCH_SIZES}
    peers = _prepare_peers(options, model, workdir, tmp, step, log_url)

    load = Load(threads=options.threads, connections=options.connections, duration_s=options.duration_s)
    quiet = QuietWaiter(options.quiet_threshold, options.quiet_budget_s)
    runs: list[PeerRun] = []
    sequential: SequentialResult | None = None
    # slipway stays up until slipway-logged is measured, then both take turns in the paired rounds.
    paired = options.log_rounds > 0 and {"slipway", "slipway-logged"} <= {p.name for p in peers}
    paired_bodies: dict[str, dict[int, Path]] = {}
    log_cost: list[PairedLogCost] = []
    log_totals: InferenceLogTotals | None = None
    with ExitStack() as stack:
        # All servers start together (their imports overlap) and idle until their turn; each is measured alone
        # and stopped right after. The CPU share of other work is recorded per case to show they stay idle.
        step(f"starting {len(peers)} servers: {', '.join(p.name for p in peers)}")
        servers: dict[str, Server] = {}
        for peer in peers:
            server = start_server(peer.name, peer.command, peer.env, peer.port, workdir / "logs" / f"{peer.name}.log")
            stack.callback(stop_process_group, server.process)
            servers[peer.name] = server
        ready_s = wait_all_ready({servers[p.name]: p.ready_path for p in peers}, SERVER_START_TIMEOUT_S)
        console.print("    ready: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in ready_s.items()))

        step(f"in-process ONNX Runtime floor ({options.floor_s:g} s per batch size)")
        quiet.wait()
        floor = tuple(measure_floor(model, rows, options.floor_s) for rows in BATCH_SIZES)

        for peer in peers:
            server = servers[peer.name]
            step(f"{peer.name}: {peer.description}, {peer.workers} worker(s), {server.url}")
            bodies = {rows: _write_body(workdir, peer, model, rows) for rows in BATCH_SIZES}
            for rows, (path, _) in bodies.items():
                expected = sklearn_labels[rows] if peer.reference == "sklearn" else references[rows][0]
                probabilities = None if peer.reference == "sklearn" else references[rows][1]
                _check_peer(peer, server.url, path, expected, probabilities, server.log_tail)
            url = f"{server.url}{peer.predict_path}"
            cases = []
            for rows, (path, form) in bodies.items():
                case = _measure_case(peer, server, url, rows, path, form, load, options, quiet, console)
                if peer.logs_inferences:
                    totals = inference_log_totals(server.url)
                    console.print(
                        f"    inference log: {totals.rows_written:,} rows written, {totals.rows_dropped:,} dropped, "
                        f"{totals.queue_rows:,} still queued ({totals.drain_wait_s:.1f} s wait for the writer)"
                    )
                    case = dataclasses.replace(case, inference_log=totals)
                cases.append(case)
            if peer.name == "slipway":
                one = Load(threads=1, connections=1, duration_s=options.duration_s)
                console.print(f"    sequential: 1 connection, 1 thread, 1 row, {options.duration_s:g} s")
                # One connection keeps one worker busy: that is the CPU it could use.
                measured = _measure(
                    server, 1, url, bodies[1][0], one, options.warmup_s, quiet, console, saturating=False
                )
                sequential = SequentialResult(
                    measured.load,
                    measured.cpu,
                    measured.quiet_wait_s,
                    measured.attempts,
                    measured.cpu.disturbed(1, NOISY_SHARE),
                )
            if paired and peer.name in ("slipway", "slipway-logged"):
                paired_bodies[peer.name] = {rows: path for rows, (path, _) in bodies.items()}
            if paired and peer.name == "slipway-logged":
                log_cost = _price_log(servers, peers, paired_bodies, load, options, quiet, console)
                log_totals = inference_log_totals(server.url)
                console.print(
                    f"    inference log after the rounds: {log_totals.rows_written:,} rows written, "
                    f"{log_totals.rows_dropped:,} dropped, {log_totals.queue_rows:,} still queued"
                )
            runs.append(
                PeerRun(peer.name, peer.description, peer.workers, ready_s[peer.name], peer.notes, tuple(cases))
            )
            if paired and peer.name == "slipway":
                continue
            for name in ("slipway", peer.name) if paired and peer.name == "slipway-logged" else (peer.name,):
                stop_process_group(servers[name].process)
                console.print(f"    {name} stopped")

    model_info = {
        "name": model.description,
        "params": model.params,
        "features": len(model.features),
        "string_features": [name for name, dtype in model.features if dtype == "string"],
        "train_rows": model.train_rows,
        "holdout_rows": len(model.rows),
        "onnx_bytes": model.onnx_path.stat().st_size,
        "onnx_input_types": sorted({_onnx_input_type(model.onnx_path, name) for name, _ in model.features}),
        "sklearn_vs_onnx_label_agreement_100_rows": float(np.mean(sklearn_labels[100] == references[100][0])),
    }
    ratios = compute_ratios(runs, options.workers)
    targets = evaluate_targets(runs, sequential.load if sequential else None, ratios, log_cost, log_totals)
    return ServingReport(
        meta, model_info, floor, tuple(runs), sequential, ratios, targets, quiet.spent_s, tuple(log_cost), log_totals
    )


def _price_log(
    servers: dict[str, Server],
    peers: Sequence[Peer],
    bodies: dict[str, dict[int, Path]],
    load: Load,
    options: ServingOptions,
    quiet: QuietWaiter,
    console: Console,
) -> list[PairedLogCost]:
    """The inference log's cost per batch size, in paired rounds of slipway and slipway-logged (bench.paired)."""
    path_of = {p.name: p.predict_path for p in peers}

    def target(name: str, rows: int) -> tuple[str, Path]:
        return f"{servers[name].url}{path_of[name]}", bodies[name][rows]

    console.print(
        f"    inference log priced in {options.log_rounds} paired rounds per case (slipway and slipway-logged "
        f"in turn, order alternating; warmup {min(options.warmup_s, 1.0):g} s, load {options.log_round_s:g} s each)"
    )
    results = []
    for rows in BATCH_SIZES:
        console.print(f"    {rows} row(s)/request:")
        results.append(
            measure_paired(
                target("slipway", rows),
                target("slipway-logged", rows),
                rows,
                options.log_rounds,
                dataclasses.replace(load, duration_s=options.log_round_s),
                min(options.warmup_s, 1.0),
                quiet,
                lambda line: console.print(f"      {line}"),
            )
        )
        console.print(f"    -> median log cost {results[-1].cost:.1%} of req/s")
    return results


def _prepare_peers(
    options: ServingOptions, model: BenchModel, workdir: Path, tmp: Path, step: Callable[[str], None], log_url: str
) -> list[Peer]:
    """Build what the selected peers serve (Bento, MLflow models) and describe how to start each."""
    selected = set(options.peers)
    peers: list[Peer] = []
    bento = None
    if selected & {"slipway", "slipway-logged", "asgi-limit"}:
        step("saving the BentoML model and building the Bento (tasks.package)")
        bento = build_slipway_bento(model, workdir / "bentoml")
    if "slipway" in selected and bento is not None:
        peers.append(
            slipway_peer(
                bento, free_port(), options.workers, tmp, access_log=options.access_log, form=options.slipway_form
            )
        )
    if "slipway-logged" in selected and bento is not None:
        # Its own BentoML home: BentoML empties the home's Prometheus folder at start, and two servers sharing
        # one would mix their counters.
        home = workdir / "bentoml-logged"
        shutil.copytree(bento.home, home, symlinks=True)
        logged = dataclasses.replace(bento, home=home)
        peers.append(
            slipway_peer(
                logged,
                free_port(),
                options.workers,
                tmp,
                inference_log=log_url,
                access_log=options.access_log,
                form=options.slipway_form,
            )
        )
    if selected & {"mlflow-onnx", "mlflow-sklearn"}:
        step("logging the onnx and sklearn flavors to a temporary MLflow store")
        mlflow_models = log_mlflow_models(model, workdir / "mlflow")
        if "mlflow-onnx" in selected:
            peers.append(
                mlflow_onnx_peer(
                    mlflow_models, free_port(), options.workers, tmp, options.mlflow_onnx_form, options.access_log
                )
            )
        if "mlflow-sklearn" in selected:
            peers.append(
                mlflow_sklearn_peer(
                    mlflow_models, free_port(), options.workers, tmp, options.mlflow_sklearn_form, options.access_log
                )
            )
    if "asgi-limit" in selected and bento is not None:
        for workers in sorted({1, options.workers}):
            peers.append(asgi_limit_peer(bento.model_dir, free_port(), workers, tmp, options.slipway_form))
    ports = [p.port for p in peers]
    if len(set(ports)) != len(ports):  # free_port() gives a free port, not a reserved one
        raise BenchError(f"two peers drew the same free port: {ports}; run again")
    return peers


@dataclass(frozen=True)
class _Measured:
    load: LoadResult
    cpu: CpuUse
    peak_rss_mib: float
    memory_end: Memory
    quiet_wait_s: float
    attempts: int


def _measure(
    server: Server,
    workers: int,
    url: str,
    body_path: Path,
    load: Load,
    warmup_s: float,
    quiet: QuietWaiter,
    console: Console,
    *,
    saturating: bool = True,
) -> _Measured:
    """Wait for a quiet machine, warm up, run wrk once with memory and CPU kept; measure again while other work
    disturbed the run (CpuUse.disturbed) or, under a `saturating` load, the server left a worker idle
    (CpuUse.underused), as long as the quiet budget allows (at most 3 runs; the least disturbed one, then the
    one with the server busiest, is kept)."""

    def flawed(measured: _Measured) -> tuple[bool, bool]:
        cpu = measured.cpu
        return cpu.disturbed(workers, NOISY_SHARE), saturating and cpu.underused(workers, UNDERUSED_SHARE)

    attempts: list[_Measured] = []
    waited_total = 0.0
    while True:
        waited, _ = quiet.wait()
        waited_total += waited
        if waited >= 2.5:
            console.print(f"      (waited {waited:.0f} s for a quiet machine)")
        run_wrk(url, body_path, dataclasses.replace(load, duration_s=warmup_s))
        with PeakMemory(server.process.pid) as peak, CpuAccount(server.process.pid) as cpu:
            result = run_wrk(url, body_path, load)
        assert cpu.result is not None
        attempts.append(
            _Measured(result, cpu.result, peak.peak_rss_mib, tree_memory(server.process.pid), 0.0, len(attempts) + 1)
        )
        console.print(
            f"    -> {result.requests_per_s:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, "
            f"non-2xx {result.non2xx}; CPU: server {cpu.result.server_share:.0%}, "
            f"other work {cpu.result.other_share:.0%} of the machine"
        )
        cost = warmup_s + load.duration_s
        disturbed, underused = flawed(attempts[-1])
        if not (disturbed or underused) or len(attempts) >= 3 or quiet.remaining_s < cost:
            break
        quiet.charge(cost)
        if disturbed:
            console.print("      other work disturbed this run: measuring again")
        else:
            console.print(
                f"      the server used {cpu.result.server_share:.0%} of the machine, under "
                f"{UNDERUSED_SHARE:.0%} of the {cpu.result.capacity(workers):.0%} its {workers} worker(s) could "
                "use (one idle?): measuring again"
            )
    best = min(attempts, key=lambda a: (*flawed(a), a.cpu.other_share, -a.cpu.server_share))
    return dataclasses.replace(best, quiet_wait_s=waited_total, attempts=len(attempts))


def _measure_case(
    peer: Peer,
    server: Server,
    url: str,
    rows: int,
    body_path: Path,
    form: str,
    load: Load,
    options: ServingOptions,
    quiet: QuietWaiter,
    console: Console,
) -> CaseResult:
    """One peer, one batch size, the shared load."""
    console.print(f"    {rows} row(s)/request: warmup {options.warmup_s:g} s, load {options.duration_s:g} s")
    measured = _measure(server, peer.workers, url, body_path, load, options.warmup_s, quiet, console)
    return CaseResult(
        peer=peer.name,
        workers=peer.workers,
        rows_per_request=rows,
        connections=load.connections,
        threads=load.threads,
        body_form=form,
        body_bytes=body_path.stat().st_size,
        load=measured.load,
        rows_per_s=measured.load.requests_per_s * rows,
        memory_end=measured.memory_end,
        peak_rss_mib=measured.peak_rss_mib,
        cpu=measured.cpu,
        quiet_wait_s=measured.quiet_wait_s,
        attempts=measured.attempts,
        disturbed=measured.cpu.disturbed(peer.workers, NOISY_SHARE),
        underused=measured.cpu.underused(peer.workers, UNDERUSED_SHARE),
    )


class _Steps:
    """Numbered progress lines with the elapsed time."""

    def __init__(self, console: Console, started: float) -> None:
        self._console = console
        self._started = started

    def __call__(self, what: str) -> None:
        self._console.print(f"[cyan][{time.perf_counter() - self._started:5.0f} s][/] {what}")


def _write_body(workdir: Path, peer: Peer, model: BenchModel, rows: int) -> tuple[Path, str]:
    """The peer's request body for `rows` holdout rows, as a file for wrk; and its top-level key."""
    body = peer.body(model.records(rows))
    path = workdir / "bodies" / f"{peer.name}-{rows}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body), encoding="utf-8")
    return path, next(iter(body))


def _check_peer(
    peer: Peer,
    url: str,
    body_path: Path,
    labels: np.ndarray,
    probabilities: np.ndarray | None,
    log_tail: Callable[[], str],
) -> None:
    """POST the exact body the load will send and compare the answer to the reference; BenchError if it differs."""
    response = httpx.post(
        f"{url}{peer.predict_path}",
        content=body_path.read_bytes(),
        headers={"content-type": "application/json"},
        timeout=30.0,
    )
    if response.status_code != 200:
        raise BenchError(
            f"{peer.name} answered {response.status_code} to {body_path.name}: {response.text[:500]}\n{log_tail()}"
        )
    problem = check_answers(peer, response.json(), labels, probabilities)
    if problem is not None:
        raise BenchError(f"{peer.name} on {body_path.name}: {problem}")


def inference_log_totals(url: str, timeout_s: float = 30.0) -> InferenceLogTotals:
    """slipway-logged's inference-log counters from its /metrics, once its queue is empty (or `timeout_s` passed)."""
    started = time.perf_counter()
    while True:
        text = httpx.get(f"{url}/metrics", timeout=10.0).text
        queued = metric_total(text, "slipway_inference_log_queue_rows")
        waited = time.perf_counter() - started
        if queued <= 0 or waited >= timeout_s:
            return InferenceLogTotals(
                rows_written=int(metric_total(text, "slipway_inference_log_rows_written_total")),
                rows_dropped=int(metric_total(text, "slipway_inference_log_rows_dropped_total")),
                queue_rows=int(queued),
                drain_wait_s=waited,
            )
        time.sleep(0.25)


def metric_total(text: str, name: str) -> float:
    """Sum of every sample of `name` (all labels) in a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _onnx_input_type(path: Path, name: str) -> str:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for value in proto.graph.input:
        if value.name == name:
            return str(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
    return "?"


# --- ratios and targets ----------------------------------------------------------------------------------


def _case(runs: Sequence[PeerRun], peer: str, rows: int) -> CaseResult | None:
    for run in runs:
        if run.name == peer:
            return next((c for c in run.cases if c.rows_per_request == rows), None)
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compute_ratios(runs: Sequence[PeerRun], workers: int) -> dict[str, dict[str, float | None]]:
    """Per batch size: slipway's req/s over each peer's, and its share of the bare-ASGI limit."""
    ratios: dict[str, dict[str, float | None]] = {}
    for rows in BATCH_SIZES:
        slipway = _case(runs, "slipway", rows)
        rps = slipway.load.requests_per_s if slipway else None

        def other(peer: str, rows: int = rows) -> float | None:
            case = _case(runs, peer, rows)
            return case.load.requests_per_s if case else None

        ratios[f"{rows}_row"] = {
            "slipway_logged_vs_slipway": _ratio(other("slipway-logged"), rps),
            "slipway_vs_mlflow_onnx": _ratio(rps, other("mlflow-onnx")),
            "slipway_vs_mlflow_sklearn": _ratio(rps, other("mlflow-sklearn")),
            f"slipway_share_of_asgi_limit_{workers}w": _ratio(rps, other(f"asgi-limit-{workers}w")),
            "slipway_share_of_asgi_limit_1w": _ratio(rps, other("asgi-limit-1w")),
        }
    return ratios


def evaluate_targets(
    runs: Sequence[PeerRun],
    sequential: LoadResult | None,
    ratios: dict[str, dict[str, float | None]],
    log_cost: Sequence[PairedLogCost] = (),
    log_totals_after_rounds: InferenceLogTotals | None = None,
) -> tuple[Target, ...]:
    """The issue's targets against this run's numbers; the log's cost from the paired rounds when there are."""
    targets: list[Target] = []
    for rows in BATCH_SIZES:
        key = f"{rows}_row"
        for peer, wanted in (("mlflow_onnx", TARGET_VS_ONNX), ("mlflow_sklearn", TARGET_VS_SKLEARN)):
            value = ratios[key][f"slipway_vs_{peer}"]
            targets.append(
                Target(
                    f"req/s vs {peer.replace('_', '-')}, {rows} row(s)",
                    f">= {wanted:g}x",
                    "n/a" if value is None else f"{value:.2f}x",
                    None if value is None else value >= wanted,
                )
            )
        mine, theirs = _case(runs, "slipway", rows), _case(runs, "mlflow-onnx", rows)
        targets.append(
            Target(
                f"p99 vs mlflow-onnx, {rows} row(s)",
                "<= mlflow-onnx p99",
                "n/a" if not (mine and theirs) else f"{mine.load.p99_ms:.2f} vs {theirs.load.p99_ms:.2f} ms",
                None if not (mine and theirs) else mine.load.p99_ms <= theirs.load.p99_ms,
            )
        )
    # Row counts since the server started, read after each case and after the paired rounds: the latest.
    logged_cases = [c for run in runs if run.name == "slipway-logged" for c in run.cases if c.inference_log]
    totals = log_totals_after_rounds or (logged_cases[-1].inference_log if logged_cases else None)
    lost = totals.rows_dropped + totals.queue_rows if totals else 0
    paired = {result.rows: result for result in log_cost}
    for rows in BATCH_SIZES:
        kept = ratios[f"{rows}_row"]["slipway_logged_vs_slipway"]
        cost = paired[rows].cost if rows in paired else (None if kept is None else 1 - kept)
        how = ""
        resolved = True
        if rows in paired:
            low, high = paired[rows].cost_range
            median_low, median_high, coverage = paired[rows].median_interval()
            how = (
                f" (median of {len(paired[rows].rounds)} paired rounds, {low:.1%} to {high:.1%}; the median "
                f"within {median_low:.1%} to {median_high:.1%} at {coverage:.1%} confidence)"
            )
            resolved = lost > 0 or not median_low <= TARGET_INFERENCE_LOG_COST < median_high
        targets.append(
            Target(
                f"inference log cost, {rows} row(s)",
                f"<= {TARGET_INFERENCE_LOG_COST:.0%} of req/s, no row lost",
                "n/a" if cost is None else f"{cost:.1%} of req/s{how}, {lost:,} rows dropped or unwritten",
                None if cost is None else (cost <= TARGET_INFERENCE_LOG_COST and lost == 0),
                resolved,
            )
        )
    slipway_cases = [c for run in runs if run.name in ("slipway", "slipway-logged") for c in run.cases]
    failures = sum(c.load.non2xx + c.load.socket_error_count for c in slipway_cases)
    failures += sum(result.failures for result in log_cost)
    if sequential is not None:
        failures += sequential.non2xx + sequential.socket_error_count
    targets.append(
        Target(
            "slipway non-2xx + socket errors",
            "0",
            str(failures) if slipway_cases else "n/a",
            failures == 0 if slipway_cases else None,
        )
    )
    targets.append(
        Target(
            "sequential one-row p50",
            f"<= {TARGET_SEQUENTIAL_P50_MS} ms",
            "n/a" if sequential is None else f"{sequential.p50_ms:.2f} ms",
            None if sequential is None else sequential.p50_ms <= TARGET_SEQUENTIAL_P50_MS,
        )
    )
    return tuple(targets)


# --- output ----------------------------------------------------------------------------------------------


def print_report(report: ServingReport, console: Console) -> None:
    """The results table, the floor, the ratios and the targets."""
    console.print(f"\n[bold]Model[/] {report.model['name']}")
    table = Table(title="HTTP peers (same model, rows and wrk load)", title_justify="left")
    for column in ("peer", "workers", "rows/req", "req/s", "rows/s", "p50 ms", "p99 ms", "non-2xx", "sock err",
                   "RSS MiB", "peak RSS", "srv CPU", "other CPU", "runs", "body"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("peer", "body") else "right")
    for run in report.peers:
        for case in run.cases:
            table.add_row(
                run.name,
                str(run.workers),
                str(case.rows_per_request),
                f"{case.load.requests_per_s:,.0f}",
                f"{case.rows_per_s:,.0f}",
                f"{case.load.p50_ms:.2f}",
                f"{case.load.p99_ms:.2f}",
                str(case.load.non2xx),
                str(case.load.socket_error_count),
                f"{case.memory_end.rss_mib:,.0f}",
                f"{case.peak_rss_mib:,.0f}",
                f"[yellow]{case.cpu.server_share:.0%}[/]" if case.underused else f"{case.cpu.server_share:.0%}",
                _fmt_other(case.cpu, case.workers),
                str(case.attempts),
                case.body_form,
            )
    console.print(table)
    if report.sequential is not None:
        seq = report.sequential.load
        console.print(
            f"slipway sequential (1 connection, 1 row): {seq.requests_per_s:,.0f} req/s, p50 {seq.p50_ms:.2f} ms, "
            f"p99 {seq.p99_ms:.2f} ms, non-2xx {seq.non2xx}, socket errors {seq.socket_error_count}, "
            f"other work {_fmt_other(report.sequential.cpu, 1)}"
        )
    for run in report.peers:
        for case in run.cases:
            if case.inference_log is not None:
                totals = case.inference_log
                console.print(
                    f"{run.name} inference log after the {case.rows_per_request}-row case (since start, both workers): "
                    f"{totals.rows_written:,} rows written, {totals.rows_dropped:,} dropped, "
                    f"{totals.queue_rows:,} still queued after {totals.drain_wait_s:.1f} s"
                )
    after = report.log_totals_after_rounds
    if after is not None:
        console.print(
            f"slipway-logged inference log after the paired rounds (since start, both workers): "
            f"{after.rows_written:,} rows written, {after.rows_dropped:,} dropped, {after.queue_rows:,} still queued"
        )
    console.print(
        "srv CPU / other CPU: share of the machine used by the server's processes / by processes other than the "
        f"server, wrk and this run; yellow other CPU: disturbed (other work over {NOISY_SHARE:.0%} while the server "
        f"got under 90% of the CPU its workers could use); yellow srv CPU: a worker idle (the server got under "
        f"{UNDERUSED_SHARE:.0%} of what its workers could use, in every run); runs: measurements of the case, the "
        "least disturbed (then the busiest) shown"
    )
    floor = Table(title="Floor: in-process ONNX Runtime session.run (no HTTP)", title_justify="left")
    for column in ("rows/call", "calls/s", "rows/s", "p50 ms", "p99 ms"):
        floor.add_column(column, justify="right")
    for result in report.floor:
        floor.add_row(
            str(result.rows),
            f"{result.calls_per_s:,.0f}",
            f"{result.rows_per_s:,.0f}",
            f"{result.p50_ms:.3f}",
            f"{result.p99_ms:.3f}",
        )
    console.print(floor)
    ratios = Table(title="Ratios (slipway req/s over the peer's, same case)", title_justify="left")
    ratios.add_column("ratio")
    for rows in BATCH_SIZES:
        ratios.add_column(f"{rows} row(s)", justify="right")
    names = list(next(iter(report.ratios.values())))
    for name in names:
        ratios.add_row(name, *[_fmt_ratio(report.ratios[f"{rows}_row"][name]) for rows in BATCH_SIZES])
    console.print(ratios)
    if report.log_cost:
        paired = Table(
            title="Inference log cost in paired rounds (slipway and slipway-logged in turn; req/s)",
            title_justify="left",
        )
        for column in ("rows/req", "round", "order", "slipway", "slipway-logged", "log cost"):
            paired.add_column(column, justify="left" if column == "order" else "right")
        for priced in report.log_cost:
            for index, item in enumerate(priced.rounds, 1):
                paired.add_row(
                    str(priced.rows),
                    str(index),
                    "logged first" if item.logged_first else "slipway first",
                    f"{item.slipway_rps:,.0f}",
                    f"{item.logged_rps:,.0f}",
                    f"{1 - item.ratio:.1%}",
                )
            paired.add_row(str(priced.rows), "median", "", "", "", f"[bold]{priced.cost:.1%}[/]", end_section=True)
        console.print(paired)
    targets = Table(title=f"Targets from the issue (model {report.meta['options']['model']})", title_justify="left")
    for column in ("target", "wanted", "measured", "met"):
        targets.add_column(column)
    for target in report.targets:
        met = "n/a" if target.met is None else ("[green]yes[/]" if target.met else "[red]no[/]")
        if target.met is not None and not target.resolved:
            met = f"[yellow]unresolved[/] (median: {'yes' if target.met else 'no'})"
        targets.add_row(target.name, target.wanted, target.measured, met)
    console.print(targets)


def _fmt_other(cpu: CpuUse, workers: int) -> str:
    """Other work's share of the machine during a case; marked when it may have lowered the figures."""
    text = f"{cpu.other_share:.0%}"
    return f"[yellow]{text}[/]" if cpu.disturbed(workers, NOISY_SHARE) else text


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def report_json(report: ServingReport) -> dict[str, Any]:
    """The report as plain JSON (dataclasses to dicts, paths to strings)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    out: dict[str, Any] = plain(report)
    # The figures the log's target reads are properties of the rounds, not fields: written out too.
    for entry, priced in zip(out["log_cost"], report.log_cost, strict=True):
        low, high, coverage = priced.median_interval()
        entry.update(
            median_ratio=priced.median_ratio,
            cost=priced.cost,
            cost_range=list(priced.cost_range),
            median_interval={"low": low, "high": high, "coverage": coverage},
        )
    return out


def _default_json_path(started_utc: str, model: str) -> Path:
    stamp = started_utc.replace(":", "").replace("-", "")
    return Path(tempfile.gettempdir()) / "slipway-bench" / f"serving-{model}-{stamp}.json"


def _meta(options: ServingOptions) -> dict[str, Any]:
    """When, where and how: machine, versions, and the command line."""
    import psutil

    from serving.inference_log import safe_url

    versions: dict[str, str | None] = {}
    for name in ("bentoml", "mlflow", "onnxruntime", "scikit-learn", "uvicorn", "httptools", "uvloop", "numpy"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    wrk = subprocess.run([find_wrk(), "-v"], capture_output=True, text=True, check=False)
    wrk_lines = (wrk.stdout or wrk.stderr).splitlines()
    return {
        "started_utc": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "command": shlex.join(["python", "-m", "bench", *sys.argv[1:]]),
        "options": {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(options).items() if k != "log_url"
        },
        "inference_log_store": safe_url(options.log_url) if options.log_url else "SQLite file in the work folder",
        "machine": {
            "cpu": _cpu_model(),
            "logical_cpus": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
        },
        "versions": {**versions, "wrk": wrk_lines[0].strip() if wrk_lines else None},
        "git": _git_state(),
        "note": "servers and wrk share the machine; servers start together and idle, each is measured alone",
    }


def _git_state() -> dict[str, Any]:
    """The commit, and the files that differ from it: the Bento is built from the working tree's `serving`."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return done.stdout.rstrip("\n") if done.returncode == 0 else ""

    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if line[3:]]
    return {"commit": git("rev-parse", "HEAD") or None, "changed_files": changed}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
