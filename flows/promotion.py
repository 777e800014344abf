"""Promote a version to champion, or roll the champion back, as all-or-nothing alias moves."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.context import actor, open_context
from tasks.errors import RegistryError
from tasks.registry import (
    TAG_ROLLED_BACK,
    TAG_STATUS,
    model_lock,
    move_aliases,
    read_history,
    rollback_target,
    rolled_back_versions,
    tag_version,
)
from tasks.types import HistoryEntry


@flow(name="promote", log_prints=True)
def promote(
    version: str,
    reason: str = "promoted by hand",
    force: bool = False,
    env: str | None = None,
    config_file: str | None = None,
) -> HistoryEntry:
    """Make VERSION the champion. A version the gates rejected needs force=True."""
    ctx = open_context(env, config_file)
    name, alias = ctx.settings.model.name, ctx.settings.promotion.champion_alias
    tags = ctx.registry.version_tags(name, version)
    if tags.get(TAG_STATUS) == "rejected" and not force:
        raise RegistryError(
            f"{name} v{version} was rejected by its gates ({tags.get('slipway.gates.failed', 'see its report')}); "
            "promote with --force to override"
        )
    with model_lock(ctx.settings.home / "locks", name, on_wait=get_run_logger().info):  # not during a release
        entry = move_aliases(ctx.registry, name, {alias: version}, "promote", actor(), reason)
    if TAG_ROLLED_BACK in tags:
        # An explicit promotion says the version is good again: a later rollback may return to it.
        ctx.registry.client.delete_model_version_tag(name, version, TAG_ROLLED_BACK)
    get_run_logger().info(
        "%s: %s", name, "; ".join(f"{m.alias} v{m.from_version} -> v{m.to_version}" for m in entry.moves)
    )
    return entry


@flow(name="rollback", log_prints=True)
def rollback(
    reason: str = "rolled back by hand", env: str | None = None, config_file: str | None = None
) -> HistoryEntry:
    """Move the champion back to the newest earlier champion that was not itself rolled back."""
    ctx = open_context(env, config_file)
    name, alias = ctx.settings.model.name, ctx.settings.promotion.champion_alias
    with model_lock(ctx.settings.home / "locks", name, on_wait=get_run_logger().info):  # not during a release
        current = ctx.registry.aliases(name).get(alias)
        if current is None:
            raise RegistryError(f"{name} has no {alias} to roll back")
        history = read_history(ctx.registry, name)
        mentioned = [m.to_version for e in history for m in e.moves] + [
            m.from_version for e in history for m in e.moves if m.from_version
        ]
        target = rollback_target(history, alias, current, rolled_back_versions(ctx.registry, name, mentioned))
        # Mark the bad version first: if the move then fails, a retry still will not pick it.
        tag_version(ctx.registry, name, current, {TAG_ROLLED_BACK: reason})
        entry = move_aliases(ctx.registry, name, {alias: target}, "rollback", actor(), reason)
    get_run_logger().info("%s: %s rolled back from v%s to v%s", name, alias, current, target)
    return entry
