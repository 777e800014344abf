"""Serve a released model behind the stable front, or stop serving. Wiring only: the logic is tasks/deploy.py."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.context import open_context
from tasks.deploy import DeployResult, StopResult, deploy_bento, resolve_target, stop_serving
from tasks.served import Deployed, deploy_version


@flow(name="deploy", log_prints=True)
def deploy(
    version: str | None = None,
    env: str | None = None,
    config_file: str | None = None,
    ready_timeout_s: float = 180.0,
) -> DeployResult:
    """Serve VERSION's Bento (default: the champion's) on serving.host:serving.port; a running one is replaced."""
    log = get_run_logger()
    ctx = open_context(env, config_file)
    s = ctx.settings
    target = resolve_target(ctx.registry, s.model.name, s.promotion.champion_alias, s.bentoml_home, version)
    log.info("deploying %s v%s (%s): Bento %s", s.model.name, target.registry_version, target.reason, target.bento.tag)
    if target.warning:
        log.warning(target.warning)
    result = deploy_bento(
        target.bento.tag, s.serving, s.home, s.bentoml_home, s.inference_log_url, ready_timeout_s=ready_timeout_s
    )
    backend = result.state.backend
    replaced = f"; replaced v{result.replaced.model_version}" if result.replaced else ""
    log.info(
        "serving %s v%s on %s (backend pid %d, port %d)%s; ready in %.1f s, switched in %.1f s, drained in %.1f s",
        backend.model_name,
        backend.model_version,
        result.url,
        backend.pid,
        backend.port,
        replaced,
        result.ready_s,
        result.switch_s,
        result.drain_s,
    )
    return result


@flow(name="deploy-remote", log_prints=True)
def deploy_remote(version: str | None = None, env: str | None = None, config_file: str | None = None) -> Deployed:
    """serving.target remote: run serving.remote.deploy_command for VERSION (default: the champion) and wait
    until serving.remote.url reports that version."""
    ctx = open_context(env, config_file)
    deployed = deploy_version(ctx.settings, ctx.registry, version)
    get_run_logger().info(deployed.detail)
    return deployed


@flow(name="stop-serving", log_prints=True)
def stop(env: str | None = None, config_file: str | None = None) -> StopResult:
    """Stop the front (after the requests in flight) and every backend."""
    ctx = open_context(env, config_file)
    result = stop_serving(ctx.settings.home)
    get_run_logger().info("stopped: %s", "; ".join(result.stopped) or "nothing was running")
    return result
