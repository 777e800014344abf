"""The monitor flow: judge what the served model saw, decide with guardrails, record everything, act.

Wiring only. The evidence: the inference-log window of the serving version, its Great Expectations suite on
the live inputs, Evidently drift of inputs and predictions against the version's reference sample, latency and
5xx rate of /predict between this scrape and the last one (with a bounded probe when there was no traffic).
The decision is `tasks.monitor.decide_action`; this flow records it (report folder, MLflow run, Prefect event
and artifact, version tag, verdict index) and carries it out: retrain (the `train` deployment, or the train
flow inline), roll back and redeploy, or redeploy.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger

from flows.context import FlowContext, open_context
from tasks import observe
from tasks.monitor import (
    DriftMethods,
    DriftRun,
    GuardState,
    InferenceLogLoss,
    LatencySummary,
    MonitorPolicy,
    MonitorVerdict,
    SloPolicy,
    decide_action,
    drift_run,
    inference_log_loss,
    inputs_suite,
    latency_summary,
    settle_retrain,
)
from tasks.registry import read_history
from tasks.remote import prometheus_histogram, prometheus_log_loss
from tasks.served import Served, api_key, current, deploy_version, served_model_dir
from tasks.types import Check, ReleaseSummary
from tasks.validate import load_suite, validate_data

if TYPE_CHECKING:
    import pandas as pd

TRAIN_DEPLOYMENT = "train/train"


def policy_of(ctx: FlowContext) -> MonitorPolicy:
    m = ctx.settings.monitor
    return MonitorPolicy(
        min_rows=m.min_rows,
        cooldown_minutes=m.cooldown_minutes,
        max_retrains_per_day=m.max_retrains_per_day,
        bake_window_minutes=m.bake_window_minutes,
        retrain_on_prediction_drift=m.drift.retrain_on_prediction_drift,
        slo=SloPolicy(p99_ms=m.slo.p99_ms, error_rate=m.slo.error_rate, min_requests=m.slo.min_requests),
    )


def methods_of(ctx: FlowContext) -> DriftMethods:
    d = ctx.settings.monitor.drift
    return DriftMethods(
        num_method=d.num_method,
        num_threshold=d.num_threshold,
        cat_method=d.cat_method,
        cat_threshold=d.cat_threshold,
        drift_share=d.drift_share,
    )


@flow(name="monitor", log_prints=True)
def monitor_flow(
    env: str | None = None,
    config_file: str | None = None,
    window_minutes: float | None = None,
    since: datetime | None = None,
) -> MonitorVerdict:
    """Judge the serving model's rows since SINCE (default: the last monitor.window_minutes, or WINDOW_MINUTES)
    and act on the verdict."""
    log = get_run_logger()
    ctx = open_context(env, config_file)
    s = ctx.settings
    m = s.monitor
    name, alias = s.model.name, s.promotion.champion_alias
    now = observe.now_utc()
    state = observe.load_state(s.monitor_dir)

    serving = current(s)
    version = serving.model_version
    latency, log_loss = _latency(ctx, serving, now - timedelta(minutes=window_minutes or m.window_minutes))

    since = since or now - timedelta(minutes=window_minutes or m.window_minutes)
    window = observe.read_live_window(s.inference_log_url, since, now, version)
    log.info("%d logged rows of v%s since %s", len(window), version, f"{since:%Y-%m-%d %H:%M:%S} UTC")

    quality: Check | None = None
    drift: DriftRun | None = None
    if version is not None and len(window) >= m.min_rows:
        reference = observe.load_reference(ctx.registry, name, version)
        features = [c for c in reference.columns if c in window.columns]
        suite = inputs_suite(load_suite(ctx.loaded.expectations_path()), s.data.target)
        quality = validate_data(suite, window[features])
        if quality.passed:
            drift = _drift(ctx, reference, window, features, serving)

    history = read_history(ctx.registry, name)
    promoted_at = observe.last_promotion_at(history, alias)
    if promoted_at is not None and (state.last_promotion_at is None or promoted_at > state.last_promotion_at):
        state = state.model_copy(update={"last_promotion_at": promoted_at})
    settled = None
    if state.retrain_run_id is not None:  # a retrain started as a deployment run: did it end, and how?
        state, settled = settle_retrain(state, *observe.retrain_outcome(state.retrain_run_id))
        if settled:
            log.info(settled)
    verdict = decide_action(
        rows=len(window),
        drift=drift.result if drift is not None else None,
        data_quality=quality,
        latency=latency,
        state=state,
        policy=policy_of(ctx),
        now=now,
        model_version=version,
    )
    if settled:
        verdict = verdict.model_copy(update={"reason": f"{verdict.reason}; {settled}"})
    if log_loss is not None:
        # Never silent: rows the serving workers could not log are in the verdict, its reason and the report.
        update: dict[str, object] = {"inference_log": log_loss}
        if log_loss.rows_dropped:
            log.warning("inference log: %s", log_loss.line())
            update["reason"] = f"{verdict.reason}; inference log: {log_loss.line()}"
        verdict = verdict.model_copy(update=update)
    report = observe.write_report(s.reports_dir, verdict, drift)
    verdict = verdict.model_copy(update={"report_path": report.html or report.folder})
    log.info("verdict: %s -> %s: %s", verdict.status, verdict.action, verdict.reason)
    log.info("report: %s", report.html or report.verdict_json)

    outcome = None
    next_state = verdict.next_state
    if verdict.action in ("retrain", "rollback", "redeploy") and m.act:
        outcome, next_state = _act(ctx, verdict, env, config_file)
        log.info("action %s: %s", verdict.action, outcome)
    elif verdict.action in ("retrain", "rollback", "redeploy"):
        outcome = "not carried out: monitor.act is false"
        next_state = state
    observe.save_state(s.monitor_dir, next_state)

    _record(ctx, verdict, report, outcome)

    # Housekeeping, after the verdict is recorded and acted on: a failure here is logged, and the next run tries again.
    retention = s.serving.inference_log_retention_days
    if retention is not None:
        pruned = observe.prune_inference_log(s.inference_log_url, now - timedelta(days=retention), return_state=True)
        if pruned.is_completed():
            log.info("inference log retention (%g days): %s", retention, pruned.result().line())
        else:
            log.error("inference log retention (%g days) failed: %s", retention, pruned.message)
    return verdict


def _latency(
    ctx: FlowContext, serving: Served, since: datetime
) -> tuple[LatencySummary | None, InferenceLogLoss | None]:
    """/predict latency since the last run's scrape, and the inference log's counters; (None, None) when serving
    does not answer. Remote serving with a Prometheus: both summed over every pod it scrapes, latency over the
    window."""
    s = ctx.settings
    if not serving.answering or serving.url is None:
        return None, None
    remote = s.serving.remote if s.serving.target == "remote" else None
    if remote is not None and remote.prometheus_url:
        window_s = (observe.now_utc() - since).total_seconds()
        histogram = prometheus_histogram(remote.prometheus_url, window_s, remote.prometheus_selector)
        return latency_summary(histogram), prometheus_log_loss(remote.prometheus_url, remote.prometheus_selector)
    base = serving.url
    text = observe.scrape_metrics(base)
    if text is None:
        return None, None
    before = observe.load_last_scrape(s.monitor_dir)
    histogram = observe.histogram_of(text)
    window = histogram.minus(before) if before is not None else histogram
    if window.count == 0 and s.monitor.slo.probe_requests > 0 and serving.model_version is not None:
        reference = observe.load_reference(ctx.registry, s.model.name, serving.model_version)
        observe.probe(base, reference, s.monitor.slo.probe_requests, api_key(s))
        text = observe.scrape_metrics(base)
        if text is None:
            return None, None
        histogram = observe.histogram_of(text)
        window = histogram.minus(before) if before is not None else histogram
    observe.save_scrape(s.monitor_dir, histogram)
    return latency_summary(window), inference_log_loss(text)


def _drift(
    ctx: FlowContext, reference: pd.DataFrame, window: pd.DataFrame, features: list[str], serving: Served
) -> DriftRun:
    """Inputs and predictions of the window against the reference sample and the model's answers on it.

    Prediction drift needs the served model on this machine (the BentoML store the release wrote); a remote
    service's model that is not there gets input drift only, and the log says why."""
    s = ctx.settings
    reference = reference[features].copy()
    live = window[features].copy()
    prediction_column: str | None = None
    model_dir = served_model_dir(s, ctx.registry, serving)
    if model_dir is not None:
        reference[observe.PREDICTION] = observe.predictions_for(model_dir, reference)
        live[observe.PREDICTION] = window["prediction"].tolist()
        prediction_column = observe.PREDICTION
    else:
        get_run_logger().warning(
            "v%s's model is not in this machine's BentoML store (%s): prediction drift not judged",
            serving.model_version,
            s.bentoml_home,
        )
    return drift_run(
        reference,
        live,
        features,
        methods_of(ctx),
        sample_rows=s.monitor.drift.sample_rows,
        seed=s.data.random_state,
        prediction_column=prediction_column,
        prediction_kind="categorical" if s.model.task == "classification" else "numerical",
    )


def _act(ctx: FlowContext, verdict: MonitorVerdict, env: str | None, config_file: str | None) -> tuple[str, GuardState]:
    """Carry out the verdict's action; returns what happened and the guard state to keep."""
    s = ctx.settings
    state = verdict.next_state
    if verdict.action == "retrain":
        launched = _launch_retrain(s.monitor.retrain, env, config_file)
        if launched is not None:
            # Its outcome is read by the next runs (settle_retrain): a failed or unpromoted retrain opens the breaker.
            return f"train deployment run {launched} started", state.model_copy(update={"retrain_run_id": launched})
        from flows.train import train_flow

        summary = train_flow(env=env, config_file=config_file)
        if not isinstance(summary, ReleaseSummary) or summary.promotion is None or not summary.promotion.move_champion:
            # The retrain ended without a new champion: the drift stays unanswered, so the breaker opens.
            state = state.model_copy(update={"last_retrain_cleared_drift": False})
            version = getattr(summary, "version", "?")
            return f"retrained inline as v{version}, not promoted: circuit breaker open", state
        state = state.model_copy(update={"last_promotion_at": observe.now_utc()})
        from flows.sync import sync_flow

        synced = sync_flow(env=env, config_file=config_file)
        return f"retrained inline: v{summary.version} is {s.promotion.champion_alias}; {synced.detail}", state
    if verdict.action == "rollback":
        from flows.promotion import rollback

        entry = rollback(reason=f"monitor: {verdict.reason}", env=env, config_file=config_file)
        target = entry.moves[0].to_version
        deployed = _deploy(ctx, target)
        return f"rolled back to v{target}; {deployed}", state
    version = verdict.model_version
    return f"redeployed: {_deploy(ctx, version)}", state


def _deploy(ctx: FlowContext, version: str | None) -> str:
    return deploy_version(ctx.settings, ctx.registry, version).detail


def _launch_retrain(mode: str, env: str | None, config_file: str | None) -> str | None:
    """Start the `train` deployment without waiting; None when inline is asked for or no deployment exists."""
    if mode != "deployment":
        return None
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        run = run_deployment(TRAIN_DEPLOYMENT, parameters={"env": env, "config_file": config_file}, timeout=0)
    except ObjectNotFound:
        get_run_logger().info("no %s deployment on this Prefect API: retraining inline", TRAIN_DEPLOYMENT)
        return None
    return str(run.id)  # type: ignore[union-attr]


def _record(ctx: FlowContext, verdict: MonitorVerdict, report: observe.MonitorReport, outcome: str | None) -> None:
    s = ctx.settings
    name = s.model.name
    from prefect.artifacts import create_markdown_artifact

    text = verdict.to_markdown()
    if outcome:
        text += f"\n**action result**: {outcome}\n"
    text += f"\nFull report (opens offline): `{report.html or report.folder}`\n"
    create_markdown_artifact(text, key="monitor-verdict", description=f"{name}: {verdict.status} -> {verdict.action}")
    observe.emit_verdict_event(name, verdict, report)
    observe.tag_serving_version(ctx.registry, name, verdict)
    observe.log_monitor_run(ctx.registry, name, verdict, report)
    observe.append_verdict(
        s.monitor_dir,
        observe.VerdictRecord(
            decided_at=verdict.decided_at,
            status=verdict.status,
            action=verdict.action,
            reason=verdict.reason,
            model_version=verdict.model_version,
            rows=verdict.rows,
            drift_share=verdict.drift.share if verdict.drift is not None else None,
            report_dir=report.folder,
            html=report.html,
            action_result=outcome,
        ),
    )
