"""Serve a Bento on serving.host:serving.port and replace it with another without failing a request.

The mechanism is a stable front: HAProxy (the Debian package, 2.6 LTS) listens on the configured address and
forwards to exactly one backend, a `bentoml serve` of the chosen Bento on a free loopback port. A deploy
starts the new backend beside the old one, waits for its /readyz, rewrites the front's config and reloads
HAProxy in master-worker mode (SIGUSR2 to the master): the master re-executes itself, the new worker takes the
listening socket over from the old one (`-x sockpair@`, so no connection is refused) and the old worker
finishes the requests it has in flight (`option idle-close-on-response`: each idle keep-alive connection gets
one more answer, with `Connection: close`, instead of being cut under a client). Only when the old worker has
left is the old backend stopped. The alternatives drop requests: restarting `bentoml serve` on the same port
refuses connections for its whole start-up (seconds), and handing a port over between two servers with
SO_REUSEPORT resets the connections queued on the listener that closes. HAProxy does exactly this job, is one
`apt-get install` away (`make install` does it) and needs no code of ours in the request path.

Each backend gets its own BENTOML_HOME, <home>/serving/<id>/bentoml, whose `bentos` and `models` are symlinks
to the shared store: `bentoml serve` empties `prometheus_multiproc_dir` under its home when it starts, so two
servers sharing one home would erase each other's metrics.

On disk, under <home>/serving/: state.json (the front and the current backend, replaced atomically),
haproxy.cfg and haproxy.log, and one folder per backend with its backend.json and server.log, so that `stop`
also finds a backend a crashed deploy left behind. Deploy and stop hold <home>/serving/lock. Processes are
found again by pid and checked against /proc (Linux): a pid that was reused by another program, or a zombie
that nobody reaped, counts as gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import httpx
import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE

from configs.settings import ServingSettings
from serving.spec import MODEL_FILE, ModelIntegrityError, read_spec, verify_model_file
from tasks.errors import BackendNotReady, FrontUnavailable, RegistryError, ServingError
from tasks.locks import file_lock
from tasks.package import linked_bentoml_home, split_tag, stored_model_dir
from tasks.registry import TAG_ROLLED_BACK
from tasks.resources import Registry
from tasks.types import Result

TAG_BENTO = "slipway.bento.tag"  # version tag written by tasks.registry.record_release
TAG_ONNX_SHA256 = "slipway.onnx.sha256"  # the hash record_release took of the ONNX file it packaged
TAG_BENTO_MODEL = "slipway.bento.model_tag"
FRONT_TEMPLATE = Path(__file__).resolve().parents[1] / "infra" / "haproxy" / "slipway.cfg"
# Debian installs haproxy in /usr/sbin, which is not on a normal user's PATH.
HAPROXY_DIRS: tuple[str, ...] = ("/usr/sbin", "/usr/local/sbin")
INSTALL_HINT = "run `make install` (it installs the Debian package), or `apt-get install haproxy` (2.6 or newer)"
BACKEND_HEADER = "x-slipway-backend"
STATE_FILE = "state.json"
BACKEND_FILE = "backend.json"
KEEP_BACKEND_FOLDERS = 5  # stopped backends whose folder (and server.log) is kept for a post-mortem


# --- typed results ----------------------------------------------------------------------------------------


class BentoInfo(Result):
    """A Bento in the local store and the model it serves, read from its model's `slipway.json`."""

    tag: str
    model_tag: str
    model_name: str
    model_version: str


class DeployTarget(Result):
    """What a deploy will serve and why that one."""

    bento: BentoInfo
    registry_version: str
    reason: str
    warning: str | None = None  # e.g. the version was rolled back: served as asked, said out loud


class BackendProcess(Result):
    """One `bentoml serve` behind the front, in its own folder and BENTOML_HOME."""

    id: str
    pid: int  # also its process group: it was started in a new session
    port: int
    bento_tag: str
    model_tag: str
    model_name: str
    model_version: str
    started_at: datetime
    folder: Path

    @property
    def bentoml_home(self) -> Path:
        return self.folder / "bentoml"

    @property
    def log_path(self) -> Path:
        return self.folder / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class FrontProcess(Result):
    """The HAProxy master serving host:port."""

    pid: int
    host: str
    port: int
    config_path: Path
    log_path: Path
    master_socket: Path
    started_at: datetime

    @property
    def url(self) -> str:
        """The address clients use."""
        return f"http://{_url_host(self.host)}:{self.port}"

    @property
    def probe_url(self) -> str:
        """The address to probe from this machine (a wildcard bind is reached over loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        return f"http://{_url_host(host)}:{self.port}"


class ServingState(Result):
    """What <home>/serving/state.json records: the front and the backend it forwards to."""

    front: FrontProcess
    backend: BackendProcess
    updated_at: datetime


class DeployResult(Result):
    """What a deploy did, with the time each phase took."""

    state: ServingState
    replaced: BackendProcess | None
    front_started: bool
    ready_s: float  # new backend start until /readyz answered
    switch_s: float  # front started or reloaded until it answered from the new backend
    drain_s: float  # old front worker finishing its requests, then the old backend stopping

    @property
    def url(self) -> str:
        return self.state.front.url


class Health(Result):
    """One probe of /readyz through the front."""

    ok: bool
    status_code: int | None
    backend_id: str | None  # the x-slipway-backend header: which backend answered
    latency_ms: float | None
    detail: str


Condition = Literal["serving", "degraded", "stale", "stopped"]


class ServingStatus(Result):
    """What is serving now, checked against the processes and a health probe."""

    condition: Condition
    state: ServingState | None
    front_alive: bool
    backend_alive: bool
    health: Health | None
    orphans: tuple[int, ...]  # pids of backends running outside the state (a crashed deploy's)
    checked_at: datetime
    detail: str

    @property
    def uptime_s(self) -> float | None:
        """Seconds the current backend has been serving."""
        if self.state is None:
            return None
        return (self.checked_at - self.state.backend.started_at).total_seconds()


class StopResult(Result):
    """What `stop` found and stopped."""

    stopped: tuple[str, ...]
    was_serving: bool


# --- which Bento ------------------------------------------------------------------------------------------


def bento_info(bentoml_home: Path, bento_tag: str) -> BentoInfo:
    """The Bento `name:version` (or `name:latest`) in the store and the model it serves; ServingError if absent."""
    name, version = split_tag(bento_tag)
    bentos = bentoml_home / "bentos" / name
    if version == "latest" and (bentos / "latest").is_file():
        version = (bentos / "latest").read_text(encoding="utf-8").strip()
    manifest = bentos / version / "bento.yaml"
    if not manifest.is_file():
        raise ServingError(
            f"Bento {bento_tag} is not in the BentoML store at {bentoml_home / 'bentos'} "
            f"(`BENTOML_HOME={bentoml_home} bentoml list` shows what is there; `slipway release` builds one)"
        )
    try:
        info = yaml.safe_load(manifest.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ServingError(f"Bento {name}:{version} is corrupt: {manifest} is not readable YAML ({exc})") from None
    if not isinstance(info, dict):
        raise ServingError(f"Bento {name}:{version} is corrupt: {manifest} is not a mapping")
    model_tag = (info.get("args") or {}).get("model_tag")
    if not model_tag:
        raise ServingError(f"Bento {name}:{version} was not built by slipway: {manifest} has no model_tag argument")
    folder = stored_model_dir(bentoml_home, str(model_tag))
    try:
        spec = read_spec(folder)
    except (ModelIntegrityError, ValueError) as exc:
        raise ServingError(f"Bento {name}:{version} serves model {model_tag}, which is not usable: {exc}") from None
    return BentoInfo(
        tag=f"{name}:{version}", model_tag=str(model_tag), model_name=spec.model_name, model_version=spec.model_version
    )


class ReleasedBento(Result):
    """A released version, the Bento its release recorded, why it was chosen, and its version tags."""

    version: str
    bento_tag: str
    reason: str
    tags: dict[str, str]


def released_bento(registry: Registry, model_name: str, champion_alias: str, version: str | None) -> ReleasedBento:
    """`version`, or the champion's when none is given, with the Bento tag its release recorded; RegistryError
    when there is no champion, ServingError when the version was never released."""
    if version is None:
        version = registry.aliases(model_name).get(champion_alias)
        if version is None:
            raise RegistryError(
                f"{model_name} has no {champion_alias} to deploy: give a VERSION (`slipway models` lists them) "
                "or release a model first"
            )
        reason = f"the {champion_alias} alias points at v{version}"
    else:
        reason = f"v{version} was asked for"
    tags = registry.version_tags(model_name, version)
    bento_tag = tags.get(TAG_BENTO)
    if not bento_tag:
        raise ServingError(
            f"{model_name} v{version} has no Bento: its version tag {TAG_BENTO} is missing "
            f"(status: {tags.get('slipway.status', 'unknown')}); only a released version can be deployed"
        )
    return ReleasedBento(version=str(version), bento_tag=bento_tag, reason=reason, tags=dict(tags))


@task(name="resolve-deploy-target", cache_policy=NO_CACHE)
def resolve_target(
    registry: Registry, model_name: str, champion_alias: str, bentoml_home: Path, version: str | None = None
) -> DeployTarget:
    """The Bento of `version`, or of the champion when no version is given, checked against the store."""
    released = released_bento(registry, model_name, champion_alias, version)
    version, tags, reason = released.version, released.tags, released.reason
    bento = bento_info(bentoml_home, released.bento_tag)
    if bento.model_version != str(version):
        raise ServingError(
            f"{model_name} v{version} names Bento {released.bento_tag}, but that Bento serves model version "
            f"{bento.model_version} ({bento.model_tag}); fix the {TAG_BENTO} tag or release v{version} again"
        )
    check_release_hash(bentoml_home, bento, tags, f"{model_name} v{version}")
    warning = None
    if TAG_ROLLED_BACK in tags:
        warning = (
            f"{model_name} v{version} was rolled back ({tags[TAG_ROLLED_BACK]}); serving it as asked, but the "
            f"{champion_alias} alias points at v{registry.aliases(model_name).get(champion_alias, '(none)')}"
        )
    return DeployTarget(bento=bento, registry_version=str(version), reason=reason, warning=warning)


def check_release_hash(bentoml_home: Path, bento: BentoInfo, tags: dict[str, str], what: str) -> None:
    """The Bento's model must be the one the release recorded: same model tag, and its ONNX file the sha256 the
    release took (tag slipway.onnx.sha256); ServingError naming both hashes otherwise, before anything starts."""
    recorded_model = tags.get(TAG_BENTO_MODEL)
    if recorded_model and recorded_model != bento.model_tag:
        raise ServingError(
            f"{what}: its Bento {bento.tag} serves model {bento.model_tag}, but the release recorded "
            f"{recorded_model} ({TAG_BENTO_MODEL}); refusing to serve it"
        )
    recorded = tags.get(TAG_ONNX_SHA256)
    if not recorded:
        raise ServingError(
            f"{what} has no recorded ONNX hash (version tag {TAG_ONNX_SHA256}), so its Bento cannot be checked "
            "against the release; release it again"
        )
    model_dir = stored_model_dir(bentoml_home, bento.model_tag)
    try:
        spec = read_spec(model_dir)
        verify_model_file(model_dir, spec)
    except (ModelIntegrityError, ValueError) as exc:
        raise ServingError(f"{what}: the model of Bento {bento.tag} is not usable: {exc}") from None
    if spec.sha256 != recorded:
        raise ServingError(
            f"{what}: {model_dir / MODEL_FILE} has sha256 {spec.sha256}, but the release recorded {recorded} "
            f"({TAG_ONNX_SHA256}): the stored model is not the released one; refusing to serve it"
        )


# --- the front's configuration ----------------------------------------------------------------------------


def find_haproxy(search_path: str | None = None) -> str:
    """Path of the haproxy executable (PATH, then /usr/sbin); FrontUnavailable saying how to install it."""
    path = search_path if search_path is not None else os.pathsep.join([os.environ.get("PATH", ""), *HAPROXY_DIRS])
    found = shutil.which("haproxy", path=path)
    if found is None:
        raise FrontUnavailable(
            f"`slipway deploy` fronts its servers with HAProxy, which is not installed: {INSTALL_HINT}"
        )
    return found


def render_front_config(
    template: str,
    host: str,
    port: int,
    backend_port: int,
    backend_id: str,
    max_body_bytes: int,
    drain_timeout_s: float,
) -> str:
    """The HAProxy config that serves host:port from the backend on 127.0.0.1:backend_port."""
    return string.Template(template).substitute(
        bind=f"{_url_host(host)}:{port}",
        backend_port=backend_port,
        backend_id=backend_id,
        max_body_bytes=max_body_bytes,
        drain_timeout_s=max(1, round(drain_timeout_s)),
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _write_front_config(haproxy: str, path: Path, text: str) -> None:
    """Check the config with `haproxy -c`, then put it in place atomically."""
    candidate = path.with_name(path.name + ".new")
    candidate.write_text(text, encoding="utf-8")
    check = subprocess.run(
        [haproxy, "-c", "-q", "-f", str(candidate)], capture_output=True, text=True, timeout=30, check=False
    )
    if check.returncode != 0:
        raise FrontUnavailable(f"HAProxy refuses the generated config {candidate}:\n{(check.stderr or check.stdout)}")
    os.replace(candidate, path)


# --- processes --------------------------------------------------------------------------------------------

# Popen handles of the servers this interpreter started: polling them reaps the ones that exited (no zombies
# in a long-lived process such as a Prefect worker) and keeps Python from warning about dropped handles.
_SPAWNED: dict[int, subprocess.Popen[bytes]] = {}
_EXIT_CODES: dict[int, int] = {}


def _spawn(argv: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> int:
    """Start a server in its own session (its pid is its process group) with its output in log_path."""
    _reap()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the CLI that started it, and no terminal signal reaches it
        )
    _SPAWNED[process.pid] = process
    _wait_exec(process)
    return process.pid


def _wait_exec(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Until the child runs its new program (its /proc cmdline is filled in), or has exited.

    Popen returns as soon as execve closes the child's close-on-exec pipe, which the kernel does before it has
    built the new process image: for a while after, /proc/<pid>/cmdline and /proc/<pid>/environ read empty (up to
    ~60 ms measured with the CPUs busy). Everything here recognizes its processes by those files (a backend by its
    BENTOML_HOME, the front by its command line), in this process and in any other `slipway` that reads the
    state, so none of them may look at a child before this returns.
    """
    deadline = time.monotonic() + timeout_s
    while not _cmdline(process.pid) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)


def _reap() -> None:
    for pid, process in list(_SPAWNED.items()):
        if process.poll() is not None:
            _EXIT_CODES[pid] = process.returncode
            del _SPAWNED[pid]


def _exit_description(pid: int) -> str:
    process = _SPAWNED.get(pid)
    if process is not None:
        # Its workers gone, the arbiter may still be exiting: give it a moment, so its exit code can be told.
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=2.0)
        _reap()
    code = _EXIT_CODES.get(pid)
    if code is None:
        return "exited"
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


def _live(pid: int) -> bool:
    """True if pid is a live process; a zombie nobody reaped is not."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _running(pid: int) -> bool:
    _reap()
    return _live(pid)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pids(match: Callable[[Path], bool]) -> list[int]:
    """Live processes whose /proc folder matches."""
    _reap()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and match(entry) and _live(int(entry.name)):
            found.append(int(entry.name))
    return found


def _in_group(pgid: int) -> Callable[[Path], bool]:
    def match(entry: Path) -> bool:
        try:
            return int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid
        except (OSError, IndexError, ValueError):
            return False

    return match


def _with_env(assignment: str) -> Callable[[Path], bool]:
    marker = assignment.encode()

    def match(entry: Path) -> bool:
        try:
            return marker in (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            return False

    return match


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):  # it left on its own meanwhile
            os.kill(pid, sig)


def _stop_processes(find: Callable[[], list[int]], first: list[int], grace_s: float) -> None:
    """SIGTERM `first`, wait until `find` finds nothing; after grace_s SIGKILL whatever it still finds."""
    _signal_all(first, signal.SIGTERM)
    for sig, wait_s in ((None, grace_s), (signal.SIGKILL, 10.0)):
        if sig is not None:
            _signal_all(find(), sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not find():
                return
            time.sleep(0.1)
    raise ServingError(f"processes {find()} still run after SIGKILL")


def _front_pids(front: FrontProcess) -> list[int]:
    """The HAProxy master and its workers (forked into the master's process group)."""
    return _pids(_in_group(front.pid))


def _front_alive(front: FrontProcess) -> bool:
    return _running(front.pid) and "haproxy" in _cmdline(front.pid)


def _backend_pids(backend: BackendProcess) -> list[int]:
    """The backend's arbiter and workers. BentoML starts each worker in a session of its own, so they are not in
    the arbiter's process group and outlive a killed arbiter; what they all share is the backend's own
    BENTOML_HOME, which no other process has."""
    return _pids(_with_env(f"BENTOML_HOME={backend.bentoml_home}"))


def _backend_alive(backend: BackendProcess) -> bool:
    return bool(_backend_pids(backend))  # _spawn returned after the exec: the environment is readable by then


def _stop_backend(backend: BackendProcess, grace_s: float = 20.0) -> None:
    """SIGTERM the arbiter (it stops its workers gracefully), or the orphaned workers when it is gone."""
    pids = _backend_pids(backend)
    if pids:
        _stop_processes(lambda: _backend_pids(backend), [backend.pid] if backend.pid in pids else pids, grace_s)


@contextmanager
def _held_port() -> Iterator[int]:
    """A free loopback port, kept out of everyone else's reach until the block ends.

    A port picked and released at once stays free for the seconds `bentoml serve` takes to import and bind, and
    anything on the machine that asks the kernel for a free port meanwhile (a test, another server, BentoML's own
    circus endpoints) may get it: the backend then dies of "address already in use". A socket bound with
    SO_REUSEADDR but not listening keeps the kernel from handing the port out, and still lets the backend (circus
    sets SO_REUSEADDR too) bind and listen on it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def _address_free(host: str, port: int) -> bool:
    """True if nothing listens on host:port. Checked before a front binds: HAProxy binds with SO_REUSEPORT and
    would silently share the port with another listener (a stale front, say) instead of failing."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are not listeners
        try:
            sock.bind((host or "0.0.0.0", port))
        except OSError:
            return False
    return True


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _probe(base_url: str, timeout_s: float) -> Health:
    """GET /readyz on a fresh connection (so a reloaded front answers from its new worker)."""
    started = time.perf_counter()
    try:
        with httpx.Client(timeout=timeout_s, trust_env=False) as client:
            response = client.get(f"{base_url}/readyz")
    except httpx.HTTPError as exc:
        return Health(ok=False, status_code=None, backend_id=None, latency_ms=None, detail=f"{type(exc).__name__}")
    return Health(
        ok=response.status_code == 200,
        status_code=response.status_code,
        backend_id=response.headers.get(BACKEND_HEADER),
        latency_ms=round((time.perf_counter() - started) * 1000, 1),
        detail="ready" if response.status_code == 200 else response.text[:200],
    )


# --- the backend ------------------------------------------------------------------------------------------


def _serve_env(own_home: Path, serving: ServingSettings, inference_log_url: str) -> dict[str, str]:
    """Environment of `bentoml serve`: its own home, no tracking, this venv first on PATH, the service knobs."""
    env = dict(os.environ)
    env.update(
        BENTOML_HOME=str(own_home),
        BENTOML_DO_NOT_TRACK="true",
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        SLIPWAY_WORKERS=str(serving.workers),
        SLIPWAY_MAX_BATCH_ROWS=str(serving.max_batch_rows),
        SLIPWAY_MAX_BODY_BYTES=str(serving.max_body_bytes),
        SLIPWAY_UNKNOWN_CATEGORIES=serving.unknown_categories,
        SLIPWAY_ADAPTIVE_BATCHING="1" if serving.adaptive_batching else "0",
        SLIPWAY_INFERENCE_LOG_URL=inference_log_url,
        # HAProxy's front logs the requests that fail or misbehave (haproxy.log); BentoML's per-request access
        # log would cost each backend more than the model does per request.
        SLIPWAY_ACCESS_LOG="0",
    )
    if serving.api_keys:  # secrets reach the service only through its environment, never a file
        env["SLIPWAY_API_KEYS"] = json.dumps([key.get_secret_value() for key in serving.api_keys])
    return env


def _start_backend(
    bento: BentoInfo, serving: ServingSettings, serving_dir: Path, bentoml_home: Path, inference_log_url: str, port: int
) -> BackendProcess:
    """`bentoml serve` of the Bento on loopback `port`, in a new folder with its own BENTOML_HOME."""
    now = datetime.now(UTC)
    version = re.sub(r"[^a-z0-9.]+", "-", bento.model_version.lower()).strip("-")[:20] or "0"
    backend_id = f"{now:%Y%m%dT%H%M%S}-v{version}-{secrets.token_hex(3)}"
    folder = serving_dir / backend_id
    own_home = linked_bentoml_home(bentoml_home, folder / "bentoml")  # the stores shared, read-only here
    pid = _spawn(
        [sys.executable, "-m", "bentoml", "serve", bento.tag, "--host", "127.0.0.1", "--port", str(port)],
        _serve_env(own_home, serving, inference_log_url),
        cwd=folder,
        log_path=folder / "server.log",
    )
    backend = BackendProcess(
        id=backend_id,
        pid=pid,
        port=port,
        bento_tag=bento.tag,
        model_tag=bento.model_tag,
        model_name=bento.model_name,
        model_version=bento.model_version,
        started_at=now,
        folder=folder,
    )
    _atomic_write(folder / BACKEND_FILE, backend.model_dump_json(indent=2))
    return backend


def _wait_ready(backend: BackendProcess, timeout_s: float) -> float:
    """Seconds until the backend's /readyz answered 200; BackendNotReady if it exits or time runs out."""
    started = time.monotonic()
    what = f"{backend.model_name} v{backend.model_version} (Bento {backend.bento_tag})"
    while time.monotonic() - started < timeout_s:
        if not _backend_alive(backend):
            raise BackendNotReady(
                f"{what} {_exit_description(backend.pid)} before it was ready; the previous server (if any) "
                "keeps serving. "
                f"Its log: {backend.log_path}\n{_tail(backend.log_path)}"
            )
        if _probe(backend.url, timeout_s=2.0).ok:
            return time.monotonic() - started
        time.sleep(0.25)
    raise BackendNotReady(
        f"{what} was not ready within {timeout_s:g} s; the previous server (if any) keeps serving. "
        f"Its log: {backend.log_path}\n{_tail(backend.log_path)}"
    )


def _known_backends(serving_dir: Path) -> list[BackendProcess]:
    backends = []
    for path in sorted(serving_dir.glob(f"*/{BACKEND_FILE}")):
        try:
            backends.append(BackendProcess.model_validate_json(path.read_text(encoding="utf-8")))
        except ValueError:
            continue  # a half-written file of a crashed deploy: nothing was started from it
    return backends


def _prune(serving_dir: Path, keep: set[str]) -> None:
    """Remove folders of stopped backends beyond the newest few; never one that runs or is kept."""
    stopped = [b for b in _known_backends(serving_dir) if b.id not in keep and not _backend_alive(b)]
    for backend in sorted(stopped, key=lambda b: b.id)[:-KEEP_BACKEND_FOLDERS]:
        shutil.rmtree(backend.folder, ignore_errors=True)


# --- the front --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Processes:
    """`show proc` of the HAProxy master CLI."""

    reloads: int
    failed: int
    workers: tuple[int, ...]
    old_workers: tuple[int, ...]


def _master_command(socket_path: Path, command: str, timeout_s: float = 5.0) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(socket_path))
        sock.sendall(command.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)  # the master answers, then closes
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _show_proc(socket_path: Path) -> _Processes:
    """Parse `show proc`: the master's reload counters, the current and the old (draining) workers."""
    reloads = failed = 0
    workers: list[int] = []
    old: list[int] = []
    section = ""
    for line in _master_command(socket_path, "show proc").splitlines():
        if line.startswith("#"):
            section = line.lstrip("#").strip().split("<")[0].strip()
            continue
        fields = line.split()
        if len(fields) < 3 or not fields[0].isdigit():
            continue
        if fields[1] == "master":
            reloads = int(fields[2])
            match = re.search(r"failed:\s*(\d+)", line)
            failed = int(match.group(1)) if match else 0
        elif section == "workers":
            workers.append(int(fields[0]))
        elif section == "old workers":
            old.append(int(fields[0]))
    return _Processes(reloads=reloads, failed=failed, workers=tuple(workers), old_workers=tuple(old))


def _master_socket(serving_dir: Path) -> Path:
    """The master CLI socket; in the temp folder when the path is too long for a unix socket (108 bytes)."""
    path = serving_dir / "haproxy.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha256(str(serving_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"slipway-haproxy-{digest}.sock"


def _wait_front_answers(front: FrontProcess, backend_id: str, timeout_s: float) -> None:
    """Until a new connection to the front is answered by backend_id."""
    deadline = time.monotonic() + timeout_s
    last: Health | None = None
    while time.monotonic() < deadline:
        if not _front_alive(front):
            raise FrontUnavailable(f"HAProxy exited; its log: {front.log_path}\n{_tail(front.log_path)}")
        last = _probe(front.probe_url, timeout_s=2.0)
        if last.ok and last.backend_id == backend_id:
            return
        time.sleep(0.1)
    raise FrontUnavailable(
        f"HAProxy on {front.url} did not answer from backend {backend_id} within {timeout_s:.0f} s "
        f"(last probe: {last}); its log: {front.log_path}\n{_tail(front.log_path)}"
    )


def _start_front(
    haproxy: str, serving_dir: Path, host: str, port: int, backend_id: str, timeout_s: float
) -> FrontProcess:
    socket_path = _master_socket(serving_dir)
    socket_path.unlink(missing_ok=True)
    config = serving_dir / "haproxy.cfg"
    log_path = serving_dir / "haproxy.log"
    pid = _spawn(
        [haproxy, "-W", "-db", "-f", str(config), "-S", f"{socket_path},mode,600"],
        dict(os.environ),
        cwd=serving_dir,
        log_path=log_path,
    )
    front = FrontProcess(
        pid=pid,
        host=host,
        port=port,
        config_path=config,
        log_path=log_path,
        master_socket=socket_path,
        started_at=datetime.now(UTC),
    )
    try:
        _wait_front_answers(front, backend_id, timeout_s)
    except BaseException:
        _stop_processes(lambda: _front_pids(front), _front_pids(front), grace_s=5.0)
        raise
    return front


def _reload_front(front: FrontProcess, backend_id: str, timeout_s: float) -> tuple[int, ...]:
    """Graceful reload (SIGUSR2 to the master); returns the old workers, which drain and leave on their own."""
    try:
        before = _show_proc(front.master_socket)
    except OSError as exc:
        raise FrontUnavailable(
            f"cannot reach the HAProxy master (pid {front.pid}) on {front.master_socket}: {exc}; "
            "`slipway stop` then `slipway deploy` starts a new front"
        ) from None
    os.kill(front.pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout_s
    while True:
        if time.monotonic() > deadline:
            raise FrontUnavailable(f"HAProxy did not reload within {timeout_s:.0f} s; its log: {front.log_path}")
        time.sleep(0.05)
        try:
            now = _show_proc(front.master_socket)
        except OSError:
            continue  # the master is re-executing itself; its socket is back in a moment
        if now.failed > before.failed:
            raise FrontUnavailable(
                f"HAProxy refused the new config and keeps serving the old one; its log: {front.log_path}\n"
                f"{_tail(front.log_path)}"
            )
        if now.reloads > before.reloads and now.workers and not set(now.workers) & set(before.workers):
            break
    _wait_front_answers(front, backend_id, max(1.0, deadline - time.monotonic()))
    return before.workers


def _wait_gone(pids: tuple[int, ...], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def _stop_front(front: FrontProcess, grace_s: float) -> None:
    """Soft stop (SIGUSR1: stop listening, finish requests in flight), then the hard way after grace_s."""
    if not _front_alive(front):
        return
    os.kill(front.pid, signal.SIGUSR1)
    _wait_gone((front.pid,), grace_s)
    _stop_processes(lambda: _front_pids(front), _front_pids(front), grace_s=5.0)
    front.master_socket.unlink(missing_ok=True)


# --- state ------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def read_state(home: Path) -> ServingState | None:
    """The recorded serving state, or None when nothing was deployed (or it was stopped)."""
    path = home / "serving" / STATE_FILE
    if not path.is_file():
        return None
    return ServingState.model_validate_json(path.read_text(encoding="utf-8"))


@contextmanager
def _locked(serving_dir: Path, timeout_s: float = 600.0) -> Iterator[None]:
    """One deploy or stop at a time per home (another waits for it)."""
    path = serving_dir / "lock"
    with file_lock(path, timeout_s, lambda holder: ServingError(f"another deploy or stop holds {path} ({holder})")):
        yield


# --- deploy, status, stop ---------------------------------------------------------------------------------


@task(name="deploy-bento", cache_policy=NO_CACHE)
def deploy_bento(
    bento_tag: str,
    serving: ServingSettings,
    home: Path,
    bentoml_home: Path,
    inference_log_url: str,
    ready_timeout_s: float = 180.0,
    drain_timeout_s: float = 30.0,
) -> DeployResult:
    """Serve the Bento on serving.host:serving.port; a running server is replaced without failing a request.

    The new backend must be ready before the front switches to it; if it is not, it is stopped and whatever
    served before keeps serving (BackendNotReady names the version and the log). The old backend is stopped
    once the old front worker has finished its requests.
    """
    haproxy = find_haproxy()
    template = FRONT_TEMPLATE.read_text(encoding="utf-8")
    bento = bento_info(bentoml_home, bento_tag)
    serving_dir = home / "serving"
    with _locked(serving_dir):
        state = read_state(home)
        if state is not None and not _front_alive(state.front):
            # Stale: the front is gone (reboot, kill), so nothing reaches the old backend; start afresh.
            _stop_backend(state.backend)
            (serving_dir / STATE_FILE).unlink(missing_ok=True)
            state = None
        for orphan in _known_backends(serving_dir):  # started by a deploy that crashed before switching
            if (state is None or orphan.id != state.backend.id) and _backend_alive(orphan):
                _stop_backend(orphan)
        address = (serving.host, serving.port)
        if (state is None or (state.front.host, state.front.port) != address) and not _address_free(*address):
            raise FrontUnavailable(
                f"{serving.host}:{serving.port} is already in use by another process: stop it, or set serving.port"
            )

        with _held_port() as port:  # released once the backend listens on it, or was given up
            backend = _start_backend(bento, serving, serving_dir, bentoml_home, inference_log_url, port)
            try:
                ready_s = _wait_ready(backend, ready_timeout_s)
            except BaseException:
                _stop_backend(backend, grace_s=5.0)
                raise
        try:
            config = render_front_config(
                template, serving.host, serving.port, backend.port, backend.id, serving.max_body_bytes, drain_timeout_s
            )
            config_path = serving_dir / "haproxy.cfg"
            switch_started = time.monotonic()
            if state is None:
                _write_front_config(haproxy, config_path, config)
                front = _start_front(haproxy, serving_dir, serving.host, serving.port, backend.id, timeout_s=30.0)
                old_workers: tuple[int, ...] = ()
            else:
                previous = config_path.read_text(encoding="utf-8") if config_path.is_file() else None
                _write_front_config(haproxy, config_path, config)
                try:
                    old_workers = _reload_front(state.front, backend.id, timeout_s=30.0)
                except BaseException:
                    if previous is not None:  # the running front kept its config; the file says so again
                        _atomic_write(config_path, previous)
                    raise
                front = state.front.model_copy(update={"host": serving.host, "port": serving.port})
            switch_s = time.monotonic() - switch_started
        except BaseException:
            _stop_backend(backend, grace_s=5.0)
            raise
        new_state = ServingState(front=front, backend=backend, updated_at=datetime.now(UTC))
        _atomic_write(serving_dir / STATE_FILE, new_state.model_dump_json(indent=2))

        drain_started = time.monotonic()
        if state is not None:
            _wait_gone(old_workers, drain_timeout_s + 5.0)  # hard-stop-after bounds it on HAProxy's side too
            _stop_backend(state.backend)
        drain_s = time.monotonic() - drain_started
        _prune(serving_dir, keep={backend.id} | ({state.backend.id} if state else set()))
    return DeployResult(
        state=new_state,
        replaced=state.backend if state else None,
        front_started=state is None,
        ready_s=round(ready_s, 3),
        switch_s=round(switch_s, 3),
        drain_s=round(drain_s, 3),
    )


def serving_status(home: Path, timeout_s: float = 2.0) -> ServingStatus:
    """What is serving: the recorded state checked against the processes and a /readyz probe through the front."""
    serving_dir = home / "serving"
    state = read_state(home)
    now = datetime.now(UTC)
    current = state.backend.id if state else None
    orphans = (
        tuple(b.pid for b in _known_backends(serving_dir) if b.id != current and _backend_alive(b))
        if serving_dir.is_dir()
        else ()
    )
    if state is None:
        detail = "nothing is serving" + (f"; backends running outside any deploy: {orphans}" if orphans else "")
        return ServingStatus(
            condition="stopped",
            state=None,
            front_alive=False,
            backend_alive=False,
            health=None,
            orphans=orphans,
            checked_at=now,
            detail=detail,
        )
    front_alive = _front_alive(state.front)
    backend_alive = _backend_alive(state.backend)
    health = _probe(state.front.probe_url, timeout_s) if front_alive else None
    condition: Condition
    if not front_alive and not backend_alive:
        condition, detail = "stale", "the recorded processes are gone; `slipway deploy` starts afresh"
    elif front_alive and backend_alive and health is not None and health.ok and health.backend_id == current:
        condition, detail = "serving", "healthy"
    else:
        condition = "degraded"
        parts = [] if front_alive else [f"front (pid {state.front.pid}) is gone"]
        parts += [] if backend_alive else [f"backend (pid {state.backend.pid}) is gone, see {state.backend.log_path}"]
        if health is not None and not (health.ok and health.backend_id == current):
            parts.append(f"/readyz through the front: {health.status_code or health.detail}")
        detail = "; ".join(parts)
    return ServingStatus(
        condition=condition,
        state=state,
        front_alive=front_alive,
        backend_alive=backend_alive,
        health=health,
        orphans=orphans,
        checked_at=now,
        detail=detail,
    )


@task(name="stop-serving", cache_policy=NO_CACHE)
def stop_serving(home: Path, grace_s: float = 20.0) -> StopResult:
    """Stop the front (it finishes the requests in flight first), then every backend; remove the state."""
    serving_dir = home / "serving"
    if not serving_dir.is_dir():
        return StopResult(stopped=(), was_serving=False)
    stopped = []
    with _locked(serving_dir):
        state = read_state(home)
        if state is not None and _front_alive(state.front):
            _stop_front(state.front, grace_s)
            stopped.append(f"HAProxy (pid {state.front.pid}) on {state.front.url}")
        for backend in _known_backends(serving_dir):
            if _backend_alive(backend):
                _stop_backend(backend, grace_s)
                stopped.append(
                    f"{backend.model_name} v{backend.model_version} (pid {backend.pid}, {backend.bento_tag})"
                )
        (serving_dir / STATE_FILE).unlink(missing_ok=True)
        _master_socket(serving_dir).unlink(missing_ok=True)
    return StopResult(stopped=tuple(stopped), was_serving=state is not None)
