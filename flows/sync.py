"""Registry -> serving: whatever the champion alias points at is what serves, however the alias got there.

A promotion or rollback made in the MLflow UI moves the alias and nothing else; this flow, run on an interval
by `slipway up` (or by hand with `slipway sync`), writes the move into the promotion history as "manual" and
redeploys. It only replaces a running server: when nothing is serving (`slipway stop`), it starts nothing.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.context import open_context
from tasks.deploy import deploy_bento, resolve_target, serving_status
from tasks.registry import champion_in_history, read_history, record_manual_move
from tasks.types import Result


class SyncResult(Result):
    champion: str | None
    served_before: str | None
    served_now: str | None
    manual_move_recorded: bool
    deployed: bool
    detail: str


@flow(name="sync", log_prints=True)
def sync_flow(env: str | None = None, config_file: str | None = None) -> SyncResult:
    """Record alias moves made outside slipway and make serving follow the champion alias."""
    log = get_run_logger()
    ctx = open_context(env, config_file)
    s = ctx.settings
    name, alias = s.model.name, s.promotion.champion_alias
    champion = ctx.registry.aliases(name).get(alias)
    recorded = False
    if champion is not None:
        known = champion_in_history(read_history(ctx.registry, name), alias)
        if known != champion:
            record_manual_move(ctx.registry, name, alias, known, champion, "mlflow (outside slipway), seen by sync")
            recorded = True
            log.info("%s: %s moved outside slipway from v%s to v%s; recorded as manual", name, alias, known, champion)

    status = serving_status(s.home)
    served = status.state.backend.model_version if status.state is not None else None
    if champion is None:
        detail = f"{name} has no {alias}; serving left as it is"
    elif status.state is None or status.condition == "stale":
        detail = f"nothing is serving ({status.detail}); `slipway deploy` starts serving v{champion}"
    elif served == champion and status.condition == "serving":
        detail = f"serving v{served}, the {alias}: nothing to do"
    else:
        why = f"serving v{served}, {alias} is v{champion}" if served != champion else f"serving is {status.condition}"
        target = resolve_target(ctx.registry, name, alias, s.bentoml_home, champion)
        result = deploy_bento(target.bento.tag, s.serving, s.home, s.bentoml_home, s.inference_log_url)
        detail = f"{why}: deployed v{champion} ({target.bento.tag}) in {result.ready_s + result.switch_s:.1f} s"
        log.info(detail)
        return SyncResult(
            champion=champion,
            served_before=served,
            served_now=result.state.backend.model_version,
            manual_move_recorded=recorded,
            deployed=True,
            detail=detail,
        )
    log.info(detail)
    return SyncResult(
        champion=champion,
        served_before=served,
        served_now=served,
        manual_move_recorded=recorded,
        deployed=False,
        detail=detail,
    )
