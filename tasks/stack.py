"""Run slipway as a local service: the Prefect server, MLflow, and what runs the deployments.

Two profiles (stack.profile). `embedded`: the Prefect server on SQLite, the MLflow UI on the project's SQLite store,
one process serving the deployments (flows/serve.py). `server`, the production topology without containers:
`mlflow server` on a PostgreSQL database with proxied artifacts, the Prefect server on another PostgreSQL database,
the deployments of infra/prefect.yaml registered with `prefect deploy`, and a Prefect process worker running them.

`slipway up` starts each of them on 127.0.0.1 (serving itself is tasks/deploy.py's business), `slipway down` stops
them, `slipway status` shows them. Every process starts in a session of its own, so its pid is also its process
group and the children it forks (uvicorn workers, flow runs) are found with it (and below it in the process tree: a
Prefect worker gives each flow run a process group of its own), and carries SLIPWAY_STACK=<home>:<name> in its
environment, so that a pid the system reused for another program is never taken for ours. Its output goes to
<home>/logs/<name>.log. <home>/stack.json records pid, port and URL of each process (replaced atomically);
<home>/stack.lock lets one `up` or `down` at a time change it. The process helpers (spawn, /proc lookups,
SIGTERM-then-SIGKILL, log tail) are tasks/deploy.py's, shared rather than copied.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml

from configs.settings import Settings
from tasks import deploy as _proc  # its process helpers: one implementation of spawn, lookup and stop
from tasks.errors import SlipwayError
from tasks.locks import file_lock
from tasks.types import Result

STACK_FILE = "stack.json"
LOCK_FILE = "stack.lock"
HOST = "127.0.0.1"  # the stack is a local service; put a proxy in front to expose it
MARKER_VARIABLE = "SLIPWAY_STACK"
PREFECT, MLFLOW, WORKER, DEPLOYMENTS = "prefect", "mlflow", "worker", "deployments"
START_ORDER = (PREFECT, MLFLOW, WORKER, DEPLOYMENTS)
# The repository checkout: infra/prefect.yaml's entrypoints are paths relative to it, and `prefect deploy` records
# it as the directory the worker runs the flows from.
REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO_ROOT / "infra" / "prefect.yaml"
Profile = Literal["embedded", "server"]


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
    profile: Profile = "embedded"
    databases: dict[str, str] = {}  # profile server: MLflow's and Prefect's database URLs (never a password)
    updated_at: datetime | None = None


class DatabaseStatus(Result):
    """A PostgreSQL database of the server profile, as `ensure_databases` found or made it."""

    name: str  # mlflow, prefect
    url: str  # without password
    created: bool  # False: it existed already


class DeclaredDeployments(Result):
    """What infra/prefect.yaml declares: its deployment names and the one work pool they run on."""

    path: Path
    names: tuple[str, ...]
    work_pool: str
    schedules: dict[str, str]  # name -> "cron */15 * * * *", "every 60 s" or "on demand", as the file says

    def schedule_line(self) -> str:
        """One line for people: each deployment with its schedule, and the pool."""
        listed = ", ".join(f"{name} ({self.schedules[name]})" for name in self.names)
        return f"{listed} on work pool {self.work_pool}"


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
    if settings.stack.profile == "server":
        prefect_database = database_url(settings, settings.stack.prefect_database, "postgresql+asyncpg")
    else:
        prefect_database = f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}"
    env.update(
        PREFECT_API_URL=prefect_api_url(settings),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=prefect_database,
        # The flow runs and the other processes resolve the same project home whatever their working directory.
        SLIPWAY__PROJECT__HOME=str(settings.home),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    return env


def database_url(settings: Settings, database: str, driver: str = "postgresql") -> str:
    """stack.postgres_url with another database and SQLAlchemy driver; never with a password (see postgres_env)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(settings.stack.postgres_url)
    return urlunsplit((driver, parts.netloc, f"/{database}", parts.query, ""))


def maintenance_database(settings: Settings) -> str:
    """The database of stack.postgres_url, connected to for creating the others (default: postgres)."""
    from urllib.parse import urlsplit

    return urlsplit(settings.stack.postgres_url).path.lstrip("/") or "postgres"


def postgres_env(settings: Settings) -> dict[str, str]:
    """PGPASSWORD for the processes that connect to PostgreSQL (libpq and asyncpg both read it), when one is set:
    the password stays out of command lines, URLs and stack.json."""
    password = settings.stack.postgres_password
    return {"PGPASSWORD": password.get_secret_value()} if password is not None else {}


def ensure_databases(settings: Settings, timeout_s: float = 10.0) -> list[DatabaseStatus]:
    """Create MLflow's and Prefect's databases on stack.postgres_url when missing (CREATE DATABASE runs outside
    a transaction, hence autocommit); StackError naming the URL when the server cannot be reached."""
    import psycopg2
    from psycopg2 import sql

    password = settings.stack.postgres_password
    try:
        connection = psycopg2.connect(
            database_url(settings, maintenance_database(settings)),  # libpq's URI form: no SQLAlchemy driver
            password=password.get_secret_value() if password is not None else None,
            connect_timeout=max(1, int(timeout_s)),
        )
    except psycopg2.OperationalError as exc:
        raise StackError(
            f"cannot connect to PostgreSQL at {settings.stack.postgres_url} (stack.postgres_url; the password comes "
            f"from SLIPWAY__STACK__POSTGRES_PASSWORD): {str(exc).strip()}"
        ) from None
    statuses = []
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            wanted = (("mlflow", settings.stack.mlflow_database), ("prefect", settings.stack.prefect_database))
            for name, database in wanted:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                exists = cursor.fetchone() is not None
                if not exists:
                    try:
                        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                    except psycopg2.errors.DuplicateDatabase:  # another `up` made it meanwhile
                        exists = True
                    except psycopg2.Error as exc:
                        raise StackError(
                            f"cannot create the {name} database {database!r} on {settings.stack.postgres_url} "
                            f"(stack.{name}_database): {str(exc).strip()}"
                        ) from None
                statuses.append(DatabaseStatus(name=name, url=database_url(settings, database), created=not exists))
    finally:
        connection.close()
    return statuses


def prefect_server(settings: Settings) -> ComponentSpec:
    """`prefect server start` on stack.prefect_port: its database is SQLite under <home>/prefect (profile embedded)
    or stack.prefect_database on PostgreSQL (profile server)."""
    port = settings.stack.prefect_port
    url = f"http://{HOST}:{port}"
    env = stack_environment(settings)
    if settings.stack.profile == "server":
        env.update(postgres_env(settings))
    return ComponentSpec(
        name=PREFECT,
        title="Prefect server",
        argv=(sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)),
        env=env,
        cwd=settings.home,
        port=port,
        port_setting="stack.prefect_port",
        url=url,
        health_url=f"{url}/api/health",
        ready_timeout_s=settings.stack.prefect_ready_timeout_s,
        timeout_setting="stack.prefect_ready_timeout_s",
    )


def _mlflow_spec(settings: Settings, title: str, store_args: tuple[str, ...], env: dict[str, str]) -> ComponentSpec:
    """`mlflow server` with `store_args` on 127.0.0.1:stack.mlflow_port, ready when /health answers."""
    port = settings.stack.mlflow_port
    url = f"http://{HOST}:{port}"
    # Job execution (GenAI scorers, trace rollups) would start a job consumer next to the server; slipway has none.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return ComponentSpec(
        name=MLFLOW,
        title=title,
        argv=(
            sys.executable,
            "-m",
            "mlflow",
            "server",
            *store_args,
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


def mlflow_ui(settings: Settings) -> ComponentSpec:
    """`mlflow server` on the project's tracking and registry store, artifacts where the registry puts them."""
    artifacts = settings.artifact_root.as_uri()
    store_args = (
        "--backend-store-uri",
        settings.tracking_uri,
        "--registry-store-uri",
        settings.registry_uri,
        # Experiments created through the server keep their artifacts where slipway's own go, and proxied uploads
        # (mlflow-artifacts:/) land there too.
        "--default-artifact-root",
        artifacts,
        "--artifacts-destination",
        artifacts,
    )
    return _mlflow_spec(settings, "MLflow UI", store_args, stack_environment(settings))


def mlflow_server(settings: Settings) -> ComponentSpec:
    """`mlflow server` on stack.mlflow_database (PostgreSQL) with proxied artifacts: clients log and read them over
    HTTP (mlflow-artifacts:/), and the server keeps them under <home>/mlartifacts."""
    env = {**stack_environment(settings), **postgres_env(settings)}
    # The store URI through the environment, not argv: `ps` shows a command line to everyone on the machine.
    env["MLFLOW_BACKEND_STORE_URI"] = database_url(settings, settings.stack.mlflow_database, "postgresql+psycopg2")
    env.pop("MLFLOW_REGISTRY_STORE_URI", None)  # the registry lives in the same database
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # the clients' view: the server is not a client
        env.pop(variable, None)
    env.pop("MLFLOW_DEFAULT_ARTIFACT_ROOT", None)  # proxied: the server's default root is mlflow-artifacts:/
    store_args = ("--serve-artifacts", "--artifacts-destination", settings.artifact_root.as_uri())
    return _mlflow_spec(settings, "MLflow server", store_args, env)


def servers(settings: Settings) -> list[ComponentSpec]:
    """The Prefect server and MLflow of the configured profile, in the order they start."""
    if settings.stack.profile == "server":
        return [prefect_server(settings), mlflow_server(settings)]
    return [prefect_server(settings), mlflow_ui(settings)]


def worker_name() -> str:
    """The name the stack's worker registers under in its pool."""
    return f"slipway@{socket.gethostname()}"


def prefect_worker(settings: Settings, pool: str, env_name: str | None) -> ComponentSpec:
    """`prefect worker start` of a process work pool (created by it when missing) against the stack's Prefect
    server. Its flow runs inherit its environment, which is how they learn the configuration: the project home,
    the MLflow server's URL, and SLIPWAY_ENV when `up` was given --env."""
    env = stack_environment(settings)
    env.update(
        SLIPWAY__STACK__PROFILE="server",
        SLIPWAY__MLFLOW__TRACKING_URI=settings.tracking_uri,
        PREFECT_CLI_PROMPT="false",
        # Runs use this venv as it is: with auto-install on, the worker would wrap each run in `uv run
        # --no-default-groups` over the checkout's pyproject, re-syncing the shared venv without its dev tools.
        PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES="false",
    )
    if env_name:
        env["SLIPWAY_ENV"] = env_name
    argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    argv += ["--name", worker_name(), "--install-policy", "never"]
    return ComponentSpec(
        name=WORKER,
        title="Prefect worker",
        argv=tuple(argv),
        env=env,
        cwd=REPO_ROOT,  # where the deployments' pull step sets the working directory of each run anyway
        port=None,
        port_setting=None,
        url=f"http://{HOST}:{settings.stack.prefect_port}/work-pools/work-pool/{pool}",
        health_url=None,
        ready_timeout_s=settings.stack.worker_ready_timeout_s,
        timeout_setting="stack.worker_ready_timeout_s",
    )


def declared_deployments(path: Path = PREFECT_FILE) -> DeclaredDeployments:
    """The deployments infra/prefect.yaml declares and their work pool; StackError if it is missing, or its
    deployments do not share one work pool (one worker runs them all)."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise StackError(f"cannot read the deployments file {path}: {exc.strerror}") from None
    deployments = document.get("deployments") or []
    names = tuple(str(d.get("name")) for d in deployments)
    pools = {str((d.get("work_pool") or {}).get("name")) for d in deployments}
    if not names or len(pools) != 1 or "None" in pools:
        raise StackError(f"{path}: expected deployments that all name one work_pool.name, found pools {sorted(pools)}")
    schedules = {}
    for deployment in deployments:
        found = [
            f"cron {entry['cron']}" if "cron" in entry else f"every {float(entry['interval']):g} s"
            for entry in deployment.get("schedules") or []
            if "cron" in entry or "interval" in entry
        ]
        schedules[str(deployment.get("name"))] = ", ".join(found) or "on demand"
    return DeclaredDeployments(path=path, names=names, work_pool=pools.pop(), schedules=schedules)


def register_deployments(
    settings: Settings,
    declared: DeclaredDeployments,
    log_path: Path,
    parameters: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """`prefect deploy --all --prefect-file infra/prefect.yaml` from the repository root against the stack's Prefect
    server, then `parameters` (the --env and --config of `up`) set on each deployment; the deployments as the API
    returns them. StackError with the end of the log when it fails or misses stack.register_timeout_s."""
    env = stack_environment(settings)
    env["PREFECT_CLI_PROMPT"] = "false"  # never wait for an answer nobody gives
    argv = [sys.executable, "-m", "prefect", "deploy", "--all", "--prefect-file", str(declared.path)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"\n=== slipway up {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC: {' '.join(argv)}\n")
        log.flush()
        try:
            done = subprocess.run(
                argv,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=settings.stack.register_timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StackError(
                f"`prefect deploy` of {declared.path} did not finish within {settings.stack.register_timeout_s:g} s "
                f"(stack.register_timeout_s). Its log: {log_path}\n{_proc._tail(log_path)}"
            ) from None
    if done.returncode != 0:
        raise StackError(
            f"`prefect deploy` of {declared.path} exited with code {done.returncode}. Its log: {log_path}\n"
            f"{_proc._tail(log_path)}"
        )
    api_url = prefect_api_url(settings)
    found = {d["name"]: d for d in list_deployments(api_url, declared.names, timeout_s=10.0)}
    missing = [name for name in declared.names if found.get(name, {}).get("work_pool_name") != declared.work_pool]
    if missing:
        raise StackError(
            f"after `prefect deploy` of {declared.path}, the Prefect server has no deployment {', '.join(missing)} "
            f"on work pool {declared.work_pool!r}. Its log: {log_path}"
        )
    if parameters and any(value is not None for value in parameters.values()):
        with httpx.Client(base_url=api_url, timeout=10.0, trust_env=False) as client:
            for deployment in found.values():
                merged = {**(deployment.get("parameters") or {}), **parameters}
                response = client.patch(f"/deployments/{deployment['id']}", json={"parameters": merged})
                if response.status_code >= 400:
                    raise StackError(
                        f"cannot set the parameters of deployment {deployment['name']}: HTTP {response.status_code} "
                        f"{response.text[:300]}"
                    )
                deployment["parameters"] = merged
    return [found[name] for name in declared.names]


def worker_polling(api_url: str, pool: str, name: str, since: datetime | None) -> Callable[[], bool]:
    """A readiness check: the named worker of `pool` sent a heartbeat after `since` (it polls the pool)."""

    def ready() -> bool:
        try:
            with httpx.Client(timeout=5.0, trust_env=False) as client:
                response = client.post(f"{api_url}/work_pools/{pool}/workers/filter", json={})
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        for worker in response.json():
            beat = worker.get("last_heartbeat_time")
            if worker.get("name") == name and beat and (since is None or datetime.fromisoformat(beat) >= since):
                return True
        return False

    return ready


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


def _write(home: Path, state: StackState) -> None:
    path = home / STACK_FILE
    if not state.processes:
        path.unlink(missing_ok=True)
        return
    _proc._atomic_write(path, state.model_copy(update={"updated_at": datetime.now(UTC)}).model_dump_json(indent=2))


def _record(home: Path, name: str, process: StackProcess | None, profile: Profile | None = None) -> None:
    state = read_stack(home)
    processes = dict(state.processes)
    if process is None:
        processes.pop(name, None)
    else:
        processes[name] = process
    update: dict[str, Any] = {"processes": processes}
    if profile is not None:
        update["profile"] = profile
    _write(home, state.model_copy(update=update))


def check_profile(home: Path, profile: Profile) -> None:
    """StackError if processes of the other profile run in `home`: one stack per home, and `slipway down` stops
    it before the other profile starts."""
    state = read_stack(home)
    running = [p for p in state.processes.values() if _leader_alive(p)]
    if running and state.profile != profile:
        names = ", ".join(f"{p.title} (pid {p.pid})" for p in running)
        raise StackError(
            f"the {state.profile} stack runs in {home} ({names}); `slipway down` stops it, then "
            f"`slipway up --profile {profile}` starts the {profile} one"
        )


def record_databases(home: Path, databases: list[DatabaseStatus]) -> None:
    """Note the server profile's databases in stack.json, for `slipway status` (URLs without password)."""
    state = read_stack(home)
    if state.processes:
        _write(home, state.model_copy(update={"databases": {d.name: d.url for d in databases}}))


@contextmanager
def stack_lock(home: Path, timeout_s: float = 600.0) -> Iterator[None]:
    """One `slipway up` or `down` at a time per home (another waits for it)."""
    path = home / LOCK_FILE
    with file_lock(
        path, timeout_s, lambda holder: StackError(f"another `slipway up` or `down` holds {path} ({holder})")
    ):
        yield


# --- processes --------------------------------------------------------------------------------------------


def _descendants(pid: int) -> set[int]:
    """Every live process below pid in the process tree (a Prefect worker starts each flow run in a process group
    of its own, so the group alone misses them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if child not in found:
            found.add(child)
            todo.extend(children.get(child, []))
    return found


def _pids(process: StackProcess) -> list[int]:
    """The live processes that carry its marker and are in its group or below it in the tree: it, its children
    and their flow runs, never a stranger (nor a server a finished run started, which no longer descends from it)."""
    in_group, marked = _proc._in_group(process.pid), _proc._with_env(process.marker)
    below = _descendants(process.pid)
    return _proc._pids(lambda entry: (in_group(entry) or int(entry.name) in below) and marked(entry))


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


def start_component(home: Path, spec: ComponentSpec, profile: Profile = "embedded") -> Launch:
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
    _record(home, spec.name, process, profile)
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
    marked = _proc._with_env(process.marker)

    def remaining() -> list[int]:
        # Those seen before the leader went too: once it exits its children hang from init, out of its tree.
        known = {pid for pid in pids if _proc._live(pid) and marked(Path(f"/proc/{pid}"))}
        return sorted(known | set(_pids(process)))

    if process.pid in pids:
        os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while _leader_alive(process) and time.monotonic() < deadline:
            time.sleep(0.1)
    try:
        _proc._stop_processes(remaining, remaining(), grace_s=min(grace_s, 10.0))
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
