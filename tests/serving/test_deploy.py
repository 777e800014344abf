"""`slipway deploy`: real Bentos behind a real HAProxy front, real `bentoml serve` backends, 127.0.0.1 only.

Proves: a steady load running across a redeploy and a rollback sees no failed request, and every client sees
v1, then v2, then v1 again; the front keeps its pid while backends come and go, each in its own BENTOML_HOME;
a new server that cannot start (Bento missing, model tampered, not ready in time) leaves the old one serving
with an error naming the version and its log, and does not touch the old server's metrics; status reports
what serves; stop leaves no process behind; a stale state (processes gone) is detected and replaced; the
champion or a given version resolves to its Bento through a real SQLite registry; the CLI wires it all; and
without HAProxy the error says how to install it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from configs.settings import ServingSettings
from serving.spec import read_spec
from tasks import deploy
from tasks.deploy import (
    TAG_BENTO,
    BackendNotReady,
    BackendProcess,
    DeployResult,
    FrontUnavailable,
    deploy_bento,
    read_state,
    render_front_config,
    resolve_target,
    serving_status,
    stop_serving,
)
from tasks.errors import RegistryError, ServingError
from tasks.types import BentoRef

MODEL_NAME = "breast-cancer-classifier"  # the configured model, so the CLI test resolves it from the registry
LOAD_CLIENTS = 3  # two keep-alive clients and one that opens a new connection per request
LOAD_PAUSE_S = 0.01  # between requests of one client: steady, without starving the new server's start-up
# The load runs until the test stops it, however long the deploys take on a busy machine; this only keeps its
# threads from outliving a test that hangs (the slow tests time out at 600 s).
LOAD_MAX_SECONDS = 570.0


@dataclass(frozen=True)
class Store:
    """A BentoML store with a Bento per model version, shared by every test of the module."""

    bentoml_home: Path
    bentos: dict[str, BentoRef]
    rows: list[dict[str, Any]]


# --- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """The example trained twice (v1, v2: different tree counts), converted, saved and built into Bentos."""
    from examples.breast_cancer import build_model, load_data
    from tasks.convert import convert_to_onnx, infer_schema
    from tasks.package import build_bento, save_bento_model

    frame = load_data()
    schema = infer_schema(frame, "malignant", "classification")
    root = tmp_path_factory.mktemp("deploy-store") / ".slipway"  # hidden, like the default project home
    bentoml_home = root / "bentoml"
    bentos = {}
    for version, max_iter in (("1", 5), ("2", 10)):
        model = build_model({"max_iter": max_iter, "random_state": 0})
        model.fit(frame[schema.feature_names], frame["malignant"])
        onnx = convert_to_onnx(model, schema, root / f"v{version}" / "model.onnx", opset=17, ml_opset=3)
        tag = save_bento_model.fn(
            onnx.path, schema, onnx.label_output, onnx.score_output, MODEL_NAME, version, bentoml_home
        )
        bentos[version] = build_bento.fn(tag, MODEL_NAME, bentoml_home)
    rows = frame[schema.feature_names].head(8).to_dict(orient="records")
    return Store(bentoml_home=bentoml_home, bentos=bentos, rows=rows)


@pytest.fixture(scope="module")
def broken_bento(store: Store) -> BentoRef:
    """A Bento of v3 whose model file changed after it was saved: its server refuses to start."""
    from serving.spec import MODEL_FILE, SPEC_FILE, ServingSpec
    from tasks.package import build_bento, save_bento_model
    from tasks.types import ModelSchema

    v1_name, v1_version = store.bentos["1"].model_tag.split(":")
    v1_model = store.bentoml_home / "models" / v1_name / v1_version
    spec = ServingSpec.model_validate_json((v1_model / SPEC_FILE).read_text())
    schema = ModelSchema.model_validate(
        {
            "task": spec.task,
            "features": [{"name": f.name, "dtype": f.dtype} for f in spec.features],
            "target": "malignant",
            "classes": spec.classes,
        }
    )
    tag = save_bento_model.fn(
        v1_model / MODEL_FILE, schema, spec.label_output, spec.score_output, MODEL_NAME, "3", store.bentoml_home
    )
    ref = build_bento.fn(tag, MODEL_NAME, store.bentoml_home)
    name, version = tag.split(":")
    with (store.bentoml_home / "models" / name / version / MODEL_FILE).open("ab") as handle:
        handle.write(b"\0")
    return ref


@pytest.fixture
def front_port() -> Iterator[int]:
    """A free loopback port for the front, held for the whole test.

    Released at once, it would stay free for the seconds before the front binds it, for anything on the machine
    that asks for a free port meanwhile. Bound with SO_REUSEADDR and never listening, the held socket keeps the
    kernel from handing the port out, and lets HAProxy (which sets SO_REUSEADDR) bind it and the deploy's check
    see it free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
def serving(front_port: int) -> ServingSettings:
    """One worker per server, the front on a free loopback port."""
    return ServingSettings(host="127.0.0.1", port=front_port, workers=1, max_batch_rows=50)


@pytest.fixture
def served(home: Path) -> Iterator[Path]:
    """The test's home; whatever the test deployed there is stopped afterwards, and nothing may survive."""
    yield home
    state = read_state(home)
    stop_serving.fn(home, grace_s=10.0)
    if state is not None:
        assert not group_alive(state.front.pid) and not backend_alive(state.backend)


def deploy_version(store: Store, version: str, serving: ServingSettings, home: Path, **kwargs: Any) -> DeployResult:
    return deploy_bento.fn(
        store.bentos[version].tag,
        serving,
        home,
        store.bentoml_home,
        f"sqlite:///{home / 'inference_log.db'}",
        **kwargs,
    )


def _live_processes() -> Iterator[tuple[Path, list[str]]]:
    """(/proc folder, stat fields after the command name) of every live (not zombie) process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X"):
            yield entry, fields


def group_alive(pgid: int) -> bool:
    """True if a live process belongs to the process group (HAProxy's master and workers share one)."""
    return any(int(fields[2]) == pgid for _, fields in _live_processes())


def pid_alive(pid: int) -> bool:
    return any(entry.name == str(pid) for entry, _ in _live_processes())


def backend_pids(backend: BackendProcess) -> list[int]:
    """Live processes of a backend. BentoML puts each worker in a session of its own, so the arbiter's process
    group is not enough; every one of them has the backend's own BENTOML_HOME."""
    marker = f"BENTOML_HOME={backend.bentoml_home}".encode()
    pids = []
    for entry, _ in _live_processes():
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def backend_alive(backend: BackendProcess) -> bool:
    return bool(backend_pids(backend))


def wait_until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def predict(url: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    response = httpx.post(f"{url}/predict", json={"records": rows}, timeout=30.0, trust_env=False)
    assert response.status_code == 200, response.text
    return dict(response.json())


# --- a steady load ---------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    versions: list[list[str]] = field(default_factory=list)  # model_version of each answer, per client


class SteadyLoad:
    """Clients posting one-row predictions in a loop until stopped, within a time and request budget."""

    def __init__(self, url: str, rows: list[dict[str, Any]]) -> None:
        self.url, self.rows = url, rows
        self.report = LoadReport(versions=[[] for _ in range(LOAD_CLIENTS)])
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(LOAD_CLIENTS)]
        self._deadline = time.monotonic() + LOAD_MAX_SECONDS

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def wait_for(self, requests: int, timeout_s: float = 30.0) -> None:
        """Until `requests` more answers arrived."""
        target = self.report.sent + requests
        deadline = time.monotonic() + timeout_s
        while self.report.sent < target and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.report.sent >= target, f"the load made no progress: {self.report.sent} < {target}"

    def _client(self, index: int) -> None:
        # Client 0 opens a new connection per request (the listener handover); the others keep theirs alive.
        headers = {"connection": "close"} if index == 0 else {}
        with httpx.Client(base_url=self.url, timeout=30.0, headers=headers, trust_env=False) as client:
            n = 0
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                body = {"records": [self.rows[(index + n) % len(self.rows)]]}
                n += 1
                try:
                    response = client.post("/predict", json=body)
                    outcome = response.json().get("model_version") if response.status_code == 200 else None
                    problem = None if outcome else f"HTTP {response.status_code}: {response.text[:200]}"
                except Exception as exc:  # every failure counts, whatever its kind
                    outcome, problem = None, f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self.report.sent += 1
                    if problem:
                        self.report.failures.append(problem)
                    else:
                        self.report.versions[index].append(str(outcome))
                time.sleep(LOAD_PAUSE_S)


# --- redeploy and rollback under load ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_redeploy_and_rollback_under_steady_load_fail_no_request(
    store: Store, served: Path, serving: ServingSettings, record_property: Any
) -> None:
    # Given v1 served behind the front
    first = deploy_version(store, "1", serving, served)
    url = first.url
    assert first.front_started and first.replaced is None
    assert url == f"http://127.0.0.1:{serving.port}"
    assert predict(url, store.rows[:2])["model_version"] == "1"
    status = serving_status(served)
    assert status.condition == "serving" and status.state is not None
    assert (status.state.backend.model_version, status.state.backend.bento_tag) == ("1", store.bentos["1"].tag)
    assert status.health is not None and status.health.backend_id == first.state.backend.id

    # When a steady load runs while v2 is deployed, then v1 again (the rollback)
    with SteadyLoad(url, store.rows) as load:
        load.wait_for(100)
        started = time.monotonic()
        second = deploy_version(store, "2", serving, served)
        redeploy_s = time.monotonic() - started
        assert serving_status(served).state.backend.model_version == "2"  # type: ignore[union-attr]
        load.wait_for(100)
        started = time.monotonic()
        third = deploy_version(store, "1", serving, served)
        rollback_s = time.monotonic() - started
        load.wait_for(100)
    report = load.report

    numbers = {
        "requests": report.sent,
        "failed": len(report.failures),
        "redeploy_s": round(redeploy_s, 1),
        "rollback_s": round(rollback_s, 1),
        "redeploy_switch_s": second.switch_s,
        "redeploy_drain_s": second.drain_s,
    }
    for key, value in numbers.items():
        record_property(key, value)
    print(f"\nsteady load across redeploy + rollback: {numbers}")

    # Then not one request failed
    assert report.failures == [], report.failures[:10]
    # And every client saw v1, then v2, then v1 again: each switch happened once, never back and forth
    for versions in report.versions:
        assert [version for version, _ in groupby(versions)] == ["1", "2", "1"]
    # And the front kept serving with the same master while the backends came and went
    assert first.state.front.pid == second.state.front.pid == third.state.front.pid
    assert not (second.front_started or third.front_started)
    assert second.replaced == first.state.backend and third.replaced == second.state.backend
    assert not backend_alive(first.state.backend) and not backend_alive(second.state.backend)
    # And each server had its own BENTOML_HOME over the shared store
    own = third.state.backend.bentoml_home
    assert (own / "bentos").resolve() == (store.bentoml_home / "bentos").resolve()
    assert (own / "bentos").is_symlink() and (own / "models").is_symlink()
    assert (own / "prometheus_multiproc_dir").is_dir()
    assert own != second.state.backend.bentoml_home
    # And status names what serves now
    status = serving_status(served)
    assert status.condition == "serving" and status.state == third.state
    assert status.uptime_s is not None and status.uptime_s >= 0

    # When it is stopped
    stopped = stop_serving.fn(served)
    # Then no process is left and the state is gone
    assert stopped.was_serving and len(stopped.stopped) == 2
    assert not group_alive(third.state.front.pid) and not backend_alive(third.state.backend)
    assert read_state(served) is None
    assert serving_status(served).condition == "stopped"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/readyz", timeout=2.0, trust_env=False)


# --- a new server that cannot start --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_new_server_that_cannot_start_leaves_the_old_one_serving(
    store: Store, broken_bento: BentoRef, served: Path, serving: ServingSettings
) -> None:
    # Given v1 serving, with metrics written by a few requests
    first = deploy_version(store, "1", serving, served)
    for _ in range(3):
        predict(first.url, store.rows[:1])
    metrics = first.state.backend.bentoml_home / "prometheus_multiproc_dir"
    metric_files = set(os.listdir(metrics))
    assert metric_files, "v1 wrote no metrics files"
    log = f"sqlite:///{served / 'inference_log.db'}"

    # When a Bento that is not in the store is deployed, then the error says so
    with pytest.raises(ServingError, match="not in the BentoML store"):
        deploy_bento.fn(f"{MODEL_NAME}:missing", serving, served, store.bentoml_home, log)
    # When a Bento whose model was tampered is deployed, then its server exits and the error names the
    # version, the log and the cause
    with pytest.raises(BackendNotReady) as failed:
        deploy_bento.fn(broken_bento.tag, serving, served, store.bentoml_home, log)
    message = str(failed.value)
    assert f"{MODEL_NAME} v3" in message and "exited with code 1 before it was ready" in message
    assert "server.log" in message and "ModelIntegrityError" in message
    # When a server is not ready in time, then it is given up
    with pytest.raises(BackendNotReady, match=r"v2 .* was not ready within"):
        deploy_version(store, "2", serving, served, ready_timeout_s=0.5)

    # Then v1 still serves through the same front
    status = serving_status(served)
    assert status.condition == "serving" and status.state == first.state
    assert predict(first.url, store.rows[:1])["model_version"] == "1"
    # And none of the failed servers runs any more
    others = [b for b in deploy._known_backends(served / "serving") if b.id != first.state.backend.id]
    assert len(others) == 2 and not any(backend_alive(b) for b in others)
    assert status.orphans == ()
    # And starting them did not wipe v1's metrics (each server has its own prometheus_multiproc_dir)
    assert metric_files <= set(os.listdir(metrics))


# --- stale state -----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_stale_state_is_reported_and_a_deploy_starts_afresh(
    store: Store, served: Path, serving: ServingSettings
) -> None:
    # Given v1 served, then its front and its arbiter killed behind slipway's back (a crash, an OOM kill)
    first = deploy_version(store, "1", serving, served)
    os.killpg(first.state.front.pid, signal.SIGKILL)
    os.kill(first.state.backend.pid, signal.SIGKILL)  # the arbiter only: its worker is left running, orphaned
    wait_until(lambda: not group_alive(first.state.front.pid) and not pid_alive(first.state.backend.pid))
    # When status is asked, then it reports the front gone
    status = serving_status(served)
    assert status.condition == "degraded" and not status.front_alive and "front" in status.detail
    # When v1 is deployed again, then the orphaned worker is stopped, and a new front starts and serves
    again = deploy_version(store, "1", serving, served)
    assert again.front_started and again.replaced is None
    assert again.state.front.pid != first.state.front.pid
    assert not backend_alive(first.state.backend)
    assert predict(again.url, store.rows[:1])["model_version"] == "1"
    # When every process is killed (a reboot, say), then status says the state is stale
    os.killpg(again.state.front.pid, signal.SIGKILL)
    for pid in backend_pids(again.state.backend):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not group_alive(again.state.front.pid) and not backend_alive(again.state.backend))
    assert serving_status(served).condition == "stale"


# --- which Bento: the registry -----------------------------------------------------------------------------


def _register(registry: Any, store: Store, tagged: dict[str, str | None]) -> None:
    client = registry.client
    client.create_registered_model(MODEL_NAME)
    for version, bento_version in tagged.items():
        created = client.create_model_version(MODEL_NAME, source=str(store.bentoml_home / "models"))
        assert str(created.version) == version
        if bento_version is not None:
            client.set_model_version_tag(MODEL_NAME, version, TAG_BENTO, store.bentos[bento_version].tag)
            # As tasks.registry.record_release records it: the hash resolve_target checks the stored model against.
            name, label = store.bentos[bento_version].model_tag.split(":")
            spec = read_spec(store.bentoml_home / "models" / name / label)
            client.set_model_version_tag(MODEL_NAME, version, "slipway.onnx.sha256", spec.sha256)


@pytest.mark.slow
def test_the_champion_or_a_given_version_resolves_to_its_bento(registry: Any, store: Store) -> None:
    # Given v1 and v2 released with their Bentos, v3 registered without one, v4 naming v1's Bento, champion v2
    _register(registry, store, {"1": "1", "2": "2", "3": None, "4": "1"})
    registry.set_alias(MODEL_NAME, "champion", "2")
    home = store.bentoml_home
    # Then no version means the champion's Bento, and a given version means its own
    champion = resolve_target.fn(registry, MODEL_NAME, "champion", home)
    assert (champion.bento.tag, champion.registry_version) == (store.bentos["2"].tag, "2")
    assert "champion" in champion.reason and champion.bento.model_version == "2"
    assert resolve_target.fn(registry, MODEL_NAME, "champion", home, "1").bento.tag == store.bentos["1"].tag
    # And a version without a Bento, a Bento of another version, or no champion are clear errors
    with pytest.raises(ServingError, match=rf"v3 has no Bento: its version tag {TAG_BENTO} is missing"):
        resolve_target.fn(registry, MODEL_NAME, "champion", home, "3")
    with pytest.raises(ServingError, match="serves model version 1"):
        resolve_target.fn(registry, MODEL_NAME, "champion", home, "4")
    with pytest.raises(RegistryError, match="no version 9"):
        resolve_target.fn(registry, MODEL_NAME, "champion", home, "9")
    registry.delete_alias(MODEL_NAME, "champion")
    with pytest.raises(RegistryError, match="has no champion to deploy"):
        resolve_target.fn(registry, MODEL_NAME, "champion", home)


# --- the CLI -----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cli_deploys_the_champion_then_a_version_shows_status_and_stops(
    prefect_harness: None,
    registry: Any,
    store: Store,
    served: Path,
    front_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.cli import app

    runner = CliRunner()
    port = front_port
    monkeypatch.setenv("SLIPWAY__SERVING__PORT", str(port))
    monkeypatch.setenv("SLIPWAY__SERVING__WORKERS", "1")
    (served / "bentoml").symlink_to(store.bentoml_home, target_is_directory=True)
    _register(registry, store, {"1": "1", "2": "2"})
    registry.set_alias(MODEL_NAME, "champion", "2")

    # When `slipway deploy` runs without a version, then the champion serves and the output says where
    deployed = runner.invoke(app, ["deploy"])
    assert deployed.exit_code == 0, deployed.output
    assert f"{MODEL_NAME} v2: serving" in deployed.output
    assert f"http://127.0.0.1:{port}/predict" in deployed.output and store.bentos["2"].tag in deployed.output
    shown = runner.invoke(app, ["status"])
    assert shown.exit_code == 0, shown.output
    assert "serving" in shown.output and f"{MODEL_NAME} v2" in shown.output and "uptime" in shown.output
    assert "champion  v2, serving it" in shown.output
    # When a version is given, then it replaces the champion's server, and status says the champion is not serving
    assert runner.invoke(app, ["deploy", "1"]).exit_code == 0
    as_json = json.loads(runner.invoke(app, ["status", "--json"]).output)
    assert as_json["condition"] == "serving" and as_json["state"]["backend"]["model_version"] == "1"
    assert as_json["champion"] == {
        "alias": "champion", "champion": "2", "serving": "1", "error": None, "serving_champion": False
    }  # fmt: skip
    shown = runner.invoke(app, ["status"])
    assert shown.exit_code == 0 and "champion  v2, not serving it: serving v1 (`slipway sync`" in shown.output
    answered = predict(f"http://127.0.0.1:{port}", store.rows[:2])
    assert answered["model_version"] == "1"
    # When a version without a Bento is asked for, then the error names it and exits 1
    missing = runner.invoke(app, ["deploy", "7"])
    assert missing.exit_code == 1 and "no version 7" in missing.output
    # When `slipway stop` runs, then nothing serves and status exits 1
    stopped = runner.invoke(app, ["stop"])
    assert stopped.exit_code == 0 and "stopped" in stopped.output, stopped.output
    after = runner.invoke(app, ["status"])
    assert after.exit_code == 1 and "stopped" in after.output
    # Then the stop flushed the inference log, and `slipway log show` finds the request: what it was sent, what
    # it answered, with which version
    logged = runner.invoke(app, ["log", "show", answered["request_id"], "--json"])
    assert logged.exit_code == 0, logged.output
    [call] = json.loads(logged.output)
    assert call["request_id"] == answered["request_id"] and call["model_version"] == "1"
    assert [row["prediction"] for row in call["rows"]] == answered["predictions"]
    assert [row["probabilities"] for row in call["rows"]] == answered["probabilities"]
    assert [{k: v for k, v in row.items() if k in store.rows[0]} for row in call["rows"]] == store.rows[:2]


# --- without HAProxy, and the front's config ---------------------------------------------------------------


def test_deploy_without_haproxy_says_how_to_install_it(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given no haproxy on PATH nor in /usr/sbin
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(deploy, "HAPROXY_DIRS", ())
    # When a deploy starts, then it fails at once saying how to install HAProxy, having started nothing
    with pytest.raises(FrontUnavailable, match=r"make install"):
        deploy_bento.fn(f"{MODEL_NAME}:v1", ServingSettings(), home, home / "bentoml", "sqlite://")
    assert not (home / "serving").exists()


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::1"])
def test_the_front_config_is_valid_haproxy(host: str, tmp_path: Path) -> None:
    # Given the shipped template rendered for a host
    text = render_front_config(
        deploy.FRONT_TEMPLATE.read_text(), host, 3000, 41000, "20250101T000000-v1-abcdef", 1024, 30
    )
    # Then it binds the serving address, forwards to the loopback backend, and HAProxy accepts it
    assert f"bind {'[::1]' if host == '::1' else host}:3000" in text
    assert "server bento 127.0.0.1:41000" in text and "hard-stop-after 30s" in text
    path = tmp_path / "haproxy.cfg"
    deploy._write_front_config(deploy.find_haproxy(), path, text)
    assert path.read_text() == text


@pytest.mark.parametrize("command", ["deploy", "status", "stop"])
def test_serving_commands_have_help(command: str) -> None:
    from flows.cli import app

    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output, result.output
