"""Registry -> serving: whatever the champion alias points at is what serves, however the alias got there.

A promotion or rollback made in the MLflow UI moves the alias and nothing else; this flow, run on an interval
by `slipway up` (or by hand with `slipway sync`), writes the move into the promotion history as "manual" and
redeploys, on this machine or, with serving.target remote, through the platform's deploy command. It only
replaces running serving: when nothing answers (`slipway stop`, or the remote url is down), it starts nothing.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.context import open_context
from tasks.registry import champion_in_history, read_history, record_manual_move
from tasks.served import current, deploy_version
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

    serving = current(s)
    served = serving.model_version
    if champion is None:
        detail = f"{name} has no {alias}; serving left as it is"
    elif not serving.answering:
        hint = "`slipway deploy` starts" if serving.target == "local" else "bring it up, then sync deploys"
        detail = f"nothing is serving ({serving.detail}); {hint} serving v{champion}"
    elif served == champion and serving.condition == "serving":
        detail = f"serving v{served}, the {alias}: nothing to do"
    else:
        why = f"serving v{served}, {alias} is v{champion}" if served != champion else f"serving is {serving.condition}"
        deployed = deploy_version(s, ctx.registry, champion)
        detail = f"{why}: {deployed.detail} ({deployed.seconds:.1f} s)"
        log.info(detail)
        return SyncResult(
            champion=champion,
            served_before=served,
            served_now=deployed.model_version,
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
