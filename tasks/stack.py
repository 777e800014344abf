"""Run slipway as a local service: the Prefect server, the MLflow UI and the process serving the deployments.

`slipway up` starts each of them on 127.0.0.1 (serving itself is tasks/deploy.py's business), `slipway down` stops
them, `slipway status` shows them. Every process starts in a session of its own, so its pid is also its process
group and the children it forks (uvicorn workers, flow runs) are found with it, and carries
SLIPWAY_STACK=<home>:<name> in its environment, so that a pid the system reused for another program is never taken
for ours. Its output goes to <home>/logs/<name>.log. <home>/stack.json records pid, port and URL of each process
(replaced atomically); <home>/stack.lock lets one `up` or `down` at a time change it. The process helpers (spawn,
/proc lookups, SIGTERM-then-SIGKILL, log tail) are tasks/deploy.py's, shared rather than copied.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from configs.settings import Settings
from tasks import deploy as _proc  # its process helpers: one implementation of spawn, lookup and stop
from tasks.errors import SlipwayError
from tasks.types import Result

STACK_FILE = "stack.json"
LOCK_FILE = "stack.lock"
HOST = "127.0.0.1"  # the stack is a local service; put a proxy in front to expose it
MARKER_VARIABLE = "SLIPWAY_STACK"
PREFECT, MLFLOW, DEPLOYMENTS = "prefect", "mlflow", "deployments"
START_ORDER = (PREFECT, MLFLOW, DEPLOYMENTS)


class StackError(SlipwayError):
    """A stack process cannot start (port taken, exited, not ready in time) or cannot be stopped."""


# --- typed records ----------------------------------------------------------------------------------------


class ComponentSpec(Result):
    """How to start one process of the stack and how to tell that it is ready."""

    name: str  # prefect, mlflow, deployments: its key in stack.json and the name of its log
    title: str  # what a person calls it
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: Path
    port: int | None
    port_setting: str | None  # the setting that moves it, named when the port is taken
    url: str  # where a person looks
    health_url: str | None  # answers 200 when it is ready
    ready_timeout_s: float
    timeout_setting: str


class StackProcess(Result):
    """One running process of the stack, as stack.json records it."""

    name: str
    title: str
    pid: int  # also its process group: it was started in a new session
    port: int | None
    url: str
    health_url: str | None
    log_path: Path
    marker: str  # SLIPWAY_STACK=<home>:<name>, in the environment of the process and of its children
    started_at: datetime


class StackState(Result):
    """What <home>/stack.json records."""

    processes: dict[str, StackProcess] = {}
    updated_at: datetime | None = None


class Launch(Result):
    """A process `up` started, or found already running."""

    process: StackProcess
    started: bool  # False: it was running already and was left alone


class ComponentStatus(Result):
    """A recorded process checked against /proc and its health URL."""

    process: StackProcess
    alive: bool
    healthy: bool | None  # None: not probed (no health URL, or not alive)
    pids: tuple[int, ...]  # the process and its children


# --- what to start ----------------------------------------------------------------------------------------


def prefect_api_url(settings: Settings) -> str:
    """The API of the stack's Prefect server (what PREFECT_API_URL points at)."""
    return f"http://{HOST}:{settings.stack.prefect_port}/api"


def stack_environment(settings: Settings) -> dict[str, str]:
    """Environment of every stack process: this one's, the project's state locations, the stack's Prefect API."""
    from configs import process_environment

    env = dict(os.environ)
    env.update(process_environment(settings))  # forced, not defaulted: the stack's state is the project's
    prefect_home = settings.home / "prefect"
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)  # an older alias of the setting below: never two answers
    env.update(
        PREFECT_API_URL=prefect_api_url(settings),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}",
        # The flow runs and the other processes resolve the same project home whatever their working directory.
        SLIPWAY__PROJECT__HOME=str(settings.home),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    return env


def prefect_server(settings: Settings) -> ComponentSpec:
    """`prefect server start` on stack.prefect_port, its SQLite database under <home>/prefect."""
    port = settings.stack.prefect_port
    url = f"http://{HOST}:{port}"
    return ComponentSpec(
        name=PREFECT,
        title="Prefect server",
        argv=(sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)),
        env=stack_environment(settings),
        cwd=settings.home,
        port=port,
        port_setting="stack.prefect_port",
        url=url,
        health_url=f"{url}/api/health",
        ready_timeout_s=settings.stack.prefect_ready_timeout_s,
        timeout_setting="stack.prefect_ready_timeout_s",
    )


def mlflow_ui(settings: Settings) -> ComponentSpec:
    """`mlflow server` on the project's tracking and registry store, artifacts where the registry puts them."""
    port = settings.stack.mlflow_port
    url = f"http://{HOST}:{port}"
    artifacts = settings.artifact_root.as_uri()
    env = stack_environment(settings)
    # Job execution (GenAI scorers, trace rollups) would start a job consumer next to the UI; slipway has no jobs.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return ComponentSpec(
        name=MLFLOW,
        title="MLflow UI",
        argv=(
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            settings.tracking_uri,
            "--registry-store-uri",
            settings.registry_uri,
            # Experiments created through the server keep their artifacts where slipway's own go, and
            # proxied uploads (mlflow-artifacts:/) land there too.
            "--default-artifact-root",
            artifacts,
            "--artifacts-destination",
            artifacts,
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            str(settings.stack.mlflow_workers),
        ),
        env=env,
        cwd=settings.home,
        port=port,
        port_setting="stack.mlflow_port",
        url=url,
        health_url=f"{url}/health",
        ready_timeout_s=settings.stack.mlflow_ready_timeout_s,
        timeout_setting="stack.mlflow_ready_timeout_s",
    )


def deployments_process(settings: Settings, env_name: str | None, config_file: Path | None, cwd: Path) -> ComponentSpec:
    """`python -m flows.serve`: one process serving the deployments against the stack's Prefect server."""
    argv = [sys.executable, "-m", "flows.serve"]
    if env_name:
        argv += ["--env", env_name]
    if config_file is not None:
        argv += ["--config", str(config_file.resolve())]
    return ComponentSpec(
        name=DEPLOYMENTS,
        title="deployments",
        argv=tuple(argv),
        env=stack_environment(settings),
        cwd=cwd,  # where `slipway up` ran, so relative paths in the config mean what they mean there
        port=None,
        port_setting=None,
        url=f"http://{HOST}:{settings.stack.prefect_port}/deployments",
        health_url=None,
        ready_timeout_s=settings.stack.deployments_ready_timeout_s,
        timeout_setting="stack.deployments_ready_timeout_s",
    )


# --- state ------------------------------------------------------------------------------------------------


def read_stack(home: Path) -> StackState:
    """The recorded stack; empty when nothing was started (or everything was stopped)."""
    path = home / STACK_FILE
    if not path.is_file():
        return StackState()
    return StackState.model_validate_json(path.read_text(encoding="utf-8"))


def _record(home: Path, name: str, process: StackProcess | None) -> None:
    processes = dict(read_stack(home).processes)
    if process is None:
        processes.pop(name, None)
    else:
        processes[name] = process
    path = home / STACK_FILE
    if not processes:
        path.unlink(missing_ok=True)
        return
    _proc._atomic_write(path, StackState(processes=processes, updated_at=datetime.now(UTC)).model_dump_json(indent=2))


@contextmanager
def stack_lock(home: Path, timeout_s: float = 600.0) -> Iterator[None]:
    """One `slipway up` or `down` at a time per home (another waits for it)."""
    home.mkdir(parents=True, exist_ok=True)
    with (home / LOCK_FILE).open("a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StackError(f"another `slipway up` or `down` holds {home / LOCK_FILE}") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- processes --------------------------------------------------------------------------------------------


def _pids(process: StackProcess) -> list[int]:
    """The live processes of its group that carry its marker: it and its children, never a stranger."""
    in_group, marked = _proc._in_group(process.pid), _proc._with_env(process.marker)
    return _proc._pids(lambda entry: in_group(entry) and marked(entry))


def _leader_alive(process: StackProcess) -> bool:
    return _proc._running(process.pid) and _proc._with_env(process.marker)(Path(f"/proc/{process.pid}"))


def _answers(url: str, timeout_s: float) -> bool:
    """True if GET url answers 200 (a fresh connection, no proxies from the environment)."""
    try:
        with httpx.Client(timeout=timeout_s, trust_env=False) as client:
            return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def _port_taken(spec: ComponentSpec) -> StackError:
    variable = "SLIPWAY__" + str(spec.port_setting).upper().replace(".", "__")
    return StackError(
        f"cannot start the {spec.title}: port {spec.port} on {HOST} is in use by another process; "
        f"stop it, or set {spec.port_setting} (in the config, or {variable}=...)"
    )


def clear_stale(home: Path) -> list[StackProcess]:
    """Forget recorded processes that are gone, stopping what they left behind (a uvicorn worker holding the
    port after its parent was killed, say); the ones cleared."""
    cleared = []
    for process in read_stack(home).processes.values():
        if not _leader_alive(process):
            _stop(process, grace_s=5.0)
            _record(home, process.name, None)
            cleared.append(process)
    return cleared


def check_ports(home: Path, specs: list[ComponentSpec]) -> None:
    """StackError naming port and setting if a process that is not running yet would find its port taken."""
    recorded = read_stack(home).processes
    for spec in specs:
        running = spec.name in recorded and _leader_alive(recorded[spec.name])
        if spec.port is not None and not running and not _proc._address_free(HOST, spec.port):
            raise _port_taken(spec)


def start_component(home: Path, spec: ComponentSpec) -> Launch:
    """Start the process unless it runs already; StackError naming port and setting when the port is taken.

    It is recorded in stack.json as soon as it is spawned (a `down` finds it even if this one is interrupted);
    `wait_ready` tells when it can be used.
    """
    recorded = read_stack(home).processes.get(spec.name)
    if recorded is not None and _leader_alive(recorded):
        return Launch(process=recorded, started=False)
    if recorded is not None:  # stale: the leader is gone; what it left behind (holding the port?) goes first
        _stop(recorded, grace_s=5.0)
    if spec.port is not None and not _proc._address_free(HOST, spec.port):
        raise _port_taken(spec)
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{spec.name}.log"
    tag = f"{home}:{spec.name}"
    now = datetime.now(UTC)
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"\n=== slipway up {now:%Y-%m-%d %H:%M:%S} UTC: {' '.join(spec.argv)}\n")
    spec.cwd.mkdir(parents=True, exist_ok=True)
    pid = _proc._spawn(list(spec.argv), {**spec.env, MARKER_VARIABLE: tag}, spec.cwd, log_path)
    process = StackProcess(
        name=spec.name,
        title=spec.title,
        pid=pid,
        port=spec.port,
        url=spec.url,
        health_url=spec.health_url,
        log_path=log_path,
        marker=f"{MARKER_VARIABLE}={tag}",
        started_at=now,
    )
    _record(home, spec.name, process)
    return Launch(process=process, started=True)


def wait_ready(home: Path, launch: Launch, spec: ComponentSpec, ready: Callable[[], bool] | None = None) -> float:
    """Seconds until `ready` (default: its health URL answers 200). A process this `up` started that exits or
    misses spec.ready_timeout_s is stopped and forgotten; StackError names it and shows the end of its log."""
    process = launch.process
    is_ready = ready or (lambda: process.health_url is None or _answers(process.health_url, timeout_s=2.0))
    started = time.monotonic()
    while time.monotonic() - started < spec.ready_timeout_s:
        if not _leader_alive(process):
            if launch.started:
                _stop(process, grace_s=5.0)
                _record(home, process.name, None)
            raise StackError(
                f"the {process.title} (pid {process.pid}) {_proc._exit_description(process.pid)} before it was "
                f"ready. Its log: {process.log_path}\n{_proc._tail(process.log_path)}"
            )
        if is_ready():
            return time.monotonic() - started
        time.sleep(0.5)
    if launch.started:
        _stop(process, grace_s=10.0)
        _record(home, process.name, None)
        what = "was stopped"
    else:
        what = "was left running (it was running before this `slipway up`)"
    raise StackError(
        f"the {process.title} (pid {process.pid}) was not ready within {spec.ready_timeout_s:g} s "
        f"({spec.timeout_setting}) and {what}. Its log: {process.log_path}\n{_proc._tail(process.log_path)}"
    )


def deployments_polled(api_url: str, names: tuple[str, ...], since: datetime | None) -> Callable[[], bool]:
    """A readiness check: every named deployment exists and a process serving it polled the API after `since`."""

    def ready() -> bool:
        found = {d["name"]: d for d in list_deployments(api_url, names, timeout_s=5.0)}
        for name in names:
            deployment = found.get(name)
            if deployment is None or deployment.get("status") != "READY" or not deployment.get("last_polled"):
                return False
            if since is not None and datetime.fromisoformat(deployment["last_polled"]) < since:
                return False
        return True

    return ready


def list_deployments(api_url: str, names: tuple[str, ...] = (), timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """Deployments the Prefect API knows (those named, or all), as it returns them; [] when it does not answer."""
    body: dict[str, Any] = {"deployments": {"name": {"any_": list(names)}}} if names else {}
    try:
        with httpx.Client(timeout=timeout_s, trust_env=False) as client:
            response = client.post(f"{api_url}/deployments/filter", json=body)
    except httpx.HTTPError:
        return []
    return list(response.json()) if response.status_code == 200 else []


def _stop(process: StackProcess, grace_s: float) -> bool:
    """SIGTERM the process and give it grace_s to stop its children; then SIGTERM, and at last SIGKILL, whatever
    of its group is left (a flow run in progress, say). False when nothing of it was running."""
    pids = _pids(process)
    if not pids:
        return False
    if process.pid in pids:
        os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _leader_alive(process) and time.monotonic() < deadline:
            time.sleep(0.1)
    try:
        _proc._stop_processes(lambda: _pids(process), _pids(process), grace_s=min(grace_s, 10.0))
    except SlipwayError as exc:
        raise StackError(f"the {process.title} (pid {process.pid}) does not stop: {exc}") from None
    return True


def stop_component(home: Path, name: str, grace_s: float = 30.0) -> StackProcess | None:
    """Stop the recorded process `name` and forget it; the process when one was running, else None."""
    process = read_stack(home).processes.get(name)
    if process is None:
        return None
    stopped = _stop(process, grace_s)
    _record(home, name, None)
    return process if stopped else None


def stack_status(home: Path, timeout_s: float = 2.0) -> list[ComponentStatus]:
    """Each recorded process: alive (in /proc, with its marker) and, when it has a health URL, answering."""
    statuses = []
    order = {name: index for index, name in enumerate(START_ORDER)}
    for process in sorted(read_stack(home).processes.values(), key=lambda p: order.get(p.name, len(order))):
        alive = _leader_alive(process)
        healthy = _answers(process.health_url, timeout_s) if alive and process.health_url else None
        statuses.append(
            ComponentStatus(process=process, alive=alive, healthy=healthy, pids=tuple(sorted(_pids(process))))
        )
    return statuses
