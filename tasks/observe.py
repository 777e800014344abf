"""The monitor's I/O: what serving saw, what it was trained on, what the monitor remembers, where verdicts go.

tasks/monitor.py decides from frames and text; these tasks fetch them (the inference-log window, the reference
sample of the serving version, /metrics scrapes, a bounded probe when there was no traffic) and record the
result (the guard state, the verdict index, the report folder, an MLflow run, a Prefect event and artifact, a
tag on the serving model version). Each reads or writes through an explicit resource: a folder, a URL, the
Registry.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.errors import InferenceLogUnavailable, MonitorStateError
from tasks.monitor import GuardState, MonitorVerdict, RequestHistogram, RetrainOutcome, request_histogram
from tasks.resources import Registry
from tasks.types import HistoryEntry, Result

if TYPE_CHECKING:
    from collections.abc import Callable

    from serving.inference_log import PruneResult
    from tasks.monitor import DriftRun

REFERENCE_ARTIFACT = "slipway/reference.parquet"
PREDICTION = "prediction"
TAG_MONITOR = "slipway.monitor.last"
STATE_FILE = "state.json"
SCRAPE_FILE = "last_scrape.json"
VERDICTS_FILE = "verdicts.jsonl"
# Alias moves that put a new version in front of traffic; a rollback returns to an old one.
PROMOTING_ACTIONS = ("release", "promote", "manual")


# --- the monitor's memory: <home>/monitor -----------------------------------------------------------------------


def load_state(folder: Path) -> GuardState:
    """The guard state the last run stored, or a fresh one; a corrupt file is an error, never silently reset."""
    path = folder / STATE_FILE
    if not path.is_file():
        return GuardState()
    try:
        return GuardState.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise MonitorStateError(
            f"{path} is not a valid monitor state ({exc.__class__.__name__}: {str(exc)[:200]}); "
            "move it away to start with a fresh state (cooldowns and the circuit breaker reset with it)"
        ) from None


def save_state(folder: Path, state: GuardState) -> Path:
    return _atomic_write(folder / STATE_FILE, state.model_dump_json(indent=2))


def load_last_scrape(folder: Path) -> RequestHistogram | None:
    path = folder / SCRAPE_FILE
    if not path.is_file():
        return None
    try:
        return RequestHistogram.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError:
        return None  # only makes the next latency window start at the service's start


def save_scrape(folder: Path, histogram: RequestHistogram) -> Path:
    return _atomic_write(folder / SCRAPE_FILE, histogram.model_dump_json())


class VerdictRecord(Result):
    """One line of <home>/monitor/verdicts.jsonl: what `slipway report` lists."""

    decided_at: datetime
    status: str
    action: str
    reason: str
    model_version: str | None
    rows: int
    drift_share: float | None
    report_dir: Path
    html: Path | None
    action_result: str | None = None


def append_verdict(folder: Path, record: VerdictRecord) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / VERDICTS_FILE
    with path.open("a", encoding="utf-8") as out:
        out.write(record.model_dump_json() + "\n")
    return path


def read_verdicts(folder: Path) -> list[VerdictRecord]:
    """Every recorded verdict, oldest first; a damaged line is skipped (the others stay readable)."""
    path = folder / VERDICTS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                records.append(VerdictRecord.model_validate_json(line))
            except ValueError:
                continue
    return records


def _atomic_write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


# --- what serving saw ----------------------------------------------------------------------------------------


@task(name="scrape-metrics", cache_policy=NO_CACHE)
def scrape_metrics(base_url: str, timeout_s: float = 5.0) -> str | None:
    """The service's /metrics text, or None when it does not answer (the verdict then says so)."""
    try:
        response = httpx.get(f"{base_url}/metrics", timeout=timeout_s)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def histogram_of(text: str) -> RequestHistogram:
    return request_histogram(text, "/predict")


@task(name="probe-serving", cache_policy=NO_CACHE)
def probe(base_url: str, rows: pd.DataFrame, requests: int, api_key: str | None = None) -> int:
    """Send `requests` one-row /predict calls (rows of the reference sample) so an idle service has latency.

    Returns how many answered 200. Probe rows go to the inference log like any other, marked by a request id
    starting with "probe-", and are left out of the drift window.
    """
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    records = json.loads(rows.head(max(requests, 1)).to_json(orient="records"))
    ok = 0
    with httpx.Client(base_url=base_url, timeout=10.0, headers=headers) as client:
        for index in range(requests):
            record = records[index % len(records)]
            try:
                answer = client.post("/predict", json={"records": [record]}, headers={"x-request-id": f"probe-{index}"})
            except httpx.HTTPError:
                continue
            ok += answer.status_code == 200
    return ok


def read_live_window(url: str, since: datetime, until: datetime, model_version: str | None) -> pd.DataFrame:
    """The logged rows of `model_version` in [since, until) without probe traffic; an empty frame when none (or no
    log yet). A store that does not answer is InferenceLogUnavailable: judging it as "no traffic" would hide it."""
    from serving.inference_log import InferenceLogError, InferenceLogUnreachable, read_window

    try:
        frame = read_window(url, since, until, model_version=model_version)
    except InferenceLogUnreachable as exc:  # a store that is down is not "nothing logged yet"
        raise InferenceLogUnavailable(str(exc)) from None
    except InferenceLogError:
        return pd.DataFrame()
    if frame.empty:
        return frame
    return frame[~frame["request_id"].astype(str).str.startswith("probe-")].reset_index(drop=True)


@task(name="prune-inference-log", cache_policy=NO_CACHE)
def prune_inference_log(
    url: str, before: datetime, dry_run: bool = False, progress: Callable[[int, int], None] | None = None
) -> PruneResult:
    """Delete the logged requests older than `before` (the retention), in short transactions beside serving."""
    from serving.inference_log import prune_log

    return prune_log(url, before, dry_run=dry_run, progress=progress)


# --- what the serving version was trained on -----------------------------------------------------------------


def load_reference(registry: Registry, model_name: str, version: str) -> pd.DataFrame:
    """The reference sample the train flow logged with the version's run (inputs only)."""
    run_id = registry.version(model_name, version).run_id
    if not run_id:
        raise FileNotFoundError(f"{model_name} v{version} has no source run, so no reference sample")
    path = registry.download_artifact(run_id, REFERENCE_ARTIFACT, registry.scratch_dir("reference-"))
    if path is None:
        raise FileNotFoundError(
            f"{model_name} v{version} (run {run_id}) has no {REFERENCE_ARTIFACT}: it was not trained by "
            "`slipway train`, so there is nothing to compare live inputs with"
        )
    return pd.read_parquet(path)


def predictions_for(model_dir: Path, frame: pd.DataFrame) -> list[Any]:
    """The served model's answers on `frame`, in process (the reference side of prediction drift)."""
    from serving.predictor import Predictor
    from serving.spec import read_spec

    spec = read_spec(model_dir)
    predictor = Predictor.load(model_dir, spec)
    columns = {name: frame[name].tolist() for name, _ in spec.feature_pairs}
    return list(predictor.predict(columns).predictions)


def last_promotion_at(history: list[HistoryEntry], champion_alias: str) -> datetime | None:
    """When a new version last became champion (release, promotion or a manual move; not a rollback)."""
    times = [
        entry.at
        for entry in history
        if entry.status == "done"
        and entry.action in PROMOTING_ACTIONS
        and any(m.alias == champion_alias for m in entry.moves)
    ]
    return max(times) if times else None


def retrain_outcome(run_id: str) -> tuple[RetrainOutcome, str]:
    """(outcome, state name) of a `train` deployment run, read from the Prefect API the flow runs against.

    Completed is "completed"; failed, crashed and cancelled are "failed"; anything else is "running". A run the
    API does not know (its database was reset, say) is "failed": it will never report an outcome.
    """
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(UUID(run_id))
        except ObjectNotFound:
            return "failed", "unknown to the Prefect API"
    state = run.state
    name = str(state.type.value) if state is not None else "NO STATE"
    if state is None or not state.is_final():
        return "running", name
    return ("completed" if state.is_completed() else "failed"), name


# --- where the verdict goes ----------------------------------------------------------------------------------


class MonitorReport(Result):
    """The files of one monitor run: the folder, the Evidently HTML (when drift ran), the JSON and markdown."""

    folder: Path
    html: Path | None
    verdict_json: Path
    markdown: Path


@task(name="write-monitor-report", cache_policy=NO_CACHE)
def write_report(reports_dir: Path, verdict: MonitorVerdict, drift: DriftRun | None) -> MonitorReport:
    """<reports>/monitor/<UTC time>/: drift.html (Evidently, self-contained), drift.json, verdict.json/.md."""
    from tasks.monitor import write_drift_report

    folder = reports_dir / "monitor" / verdict.decided_at.strftime("%Y%m%dT%H%M%S%fZ")
    folder.mkdir(parents=True, exist_ok=True)
    html = write_drift_report(drift, folder).html if drift is not None else None
    verdict = verdict.model_copy(update={"report_path": html or folder})
    verdict_json = _atomic_write(folder / "verdict.json", verdict.model_dump_json(indent=2))
    markdown = _atomic_write(folder / "verdict.md", verdict.to_markdown())
    return MonitorReport(folder=folder, html=html, verdict_json=verdict_json, markdown=markdown)


@task(name="log-monitor-run", cache_policy=NO_CACHE)
def log_monitor_run(registry: Registry, model_name: str, verdict: MonitorVerdict, report: MonitorReport) -> str:
    """One MLflow run per monitor run, in the experiment `<experiment>-monitor`: metrics, tags and the report."""
    monitor = replace(registry, experiment=f"{registry.experiment}-monitor")
    client = monitor.client
    tags = {
        "slipway.model": model_name,
        "slipway.model_version": verdict.model_version or "none",
        "slipway.status": verdict.status,
        "slipway.action": verdict.action,
        "mlflow.note.content": verdict.to_markdown(),
    }
    run = client.create_run(monitor.experiment_id(), run_name=f"monitor-{verdict.decided_at:%Y%m%dT%H%M%S}", tags=tags)
    run_id = run.info.run_id
    metrics: dict[str, float] = {"rows": float(verdict.rows)}
    if verdict.drift is not None:
        metrics["drift_share"] = verdict.drift.share
        metrics["drifted_columns"] = float(len(verdict.drift.drifted_columns))
    if verdict.inference_log is not None:
        metrics["inference_log_rows_dropped"] = float(verdict.inference_log.rows_dropped)
        metrics["inference_log_rows_written"] = float(verdict.inference_log.rows_written)
    if verdict.latency is not None:
        for key in ("p50_ms", "p95_ms", "p99_ms", "error_rate"):
            value = getattr(verdict.latency, key)
            if value is not None:
                metrics[key] = float(value)
        metrics["requests"] = float(verdict.latency.requests)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    for path in (report.html, report.verdict_json, report.markdown):
        if path is not None:
            client.log_artifact(run_id, str(path), "monitor")
    client.set_terminated(run_id)
    return run_id


@task(name="tag-serving-version", cache_policy=NO_CACHE)
def tag_serving_version(registry: Registry, model_name: str, verdict: MonitorVerdict) -> None:
    """The last verdict on the model version it judged (what the MLflow UI shows beside the version)."""
    if verdict.model_version is None:
        return
    value = f"{verdict.decided_at:%Y-%m-%dT%H:%M:%SZ} {verdict.status} -> {verdict.action}: {verdict.reason}"
    registry.tag_version(model_name, verdict.model_version, {TAG_MONITOR: value[:4900]})


def emit_verdict_event(model_name: str, verdict: MonitorVerdict, report: MonitorReport) -> str:
    """A Prefect event `slipway.monitor.<status>` (and `.action.<action>` when one is decided) on the model."""
    from prefect.events import emit_event

    resource = {"prefect.resource.id": f"slipway.model.{model_name}", "prefect.resource.name": model_name}
    payload = {
        "status": verdict.status,
        "action": verdict.action,
        "reason": verdict.reason,
        "guardrail": verdict.guardrail,
        "model_version": verdict.model_version,
        "rows": verdict.rows,
        "drift_share": verdict.drift.share if verdict.drift is not None else None,
        "inference_log_rows_dropped": verdict.inference_log.rows_dropped if verdict.inference_log else None,
        "report": str(report.html or report.folder),
    }
    name = f"slipway.monitor.{verdict.status}"
    emit_event(event=name, resource=resource, payload=payload)
    if verdict.action != "none":
        emit_event(event=f"slipway.monitor.action.{verdict.action}", resource=resource, payload=payload)
    return name


def now_utc() -> datetime:
    return datetime.now(UTC)
