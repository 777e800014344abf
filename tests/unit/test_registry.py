"""Alias moves are all or nothing, the history reads back, and rollbacks never bounce to a bad version."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tasks.errors import PromotionFailed, RollbackImpossible
from tasks.registry import (
    TAG_ROLLED_BACK,
    decide_promotion,
    move_aliases,
    read_history,
    rollback_target,
    rolled_back_versions,
)
from tasks.resources import Registry
from tasks.types import AliasMove, Check, GateReport, HistoryEntry

NAME = "unit-model"


def _versions(registry: Registry, count: int) -> list[str]:
    registry.client.create_registered_model(NAME)
    return [
        str(registry.client.create_model_version(NAME, source=f"file:///nowhere/{i}").version) for i in range(count)
    ]


def test_move_sets_aliases_and_records_history(registry: Registry) -> None:
    v1, v2 = _versions(registry, 2)
    move_aliases.fn(registry, NAME, {"challenger": v1, "champion": v1}, "release", "tester", "first")
    entry = move_aliases.fn(registry, NAME, {"champion": v2}, "promote", "tester", "better")
    assert registry.aliases(NAME) == {"challenger": v1, "champion": v2}
    assert entry.moves == (AliasMove(alias="champion", from_version=v1, to_version=v2),)
    history = read_history(registry, NAME)
    assert [(e.action, e.status) for e in history] == [("release", "done"), ("promote", "done")]
    assert history[1].actor == "tester" and history[1].reason == "better"


def test_failed_move_restores_every_alias(registry: Registry) -> None:
    # Given challenger and champion on v1, when a move of both fails on the second alias (a version that
    # does not exist), then both aliases are back on v1 and the history entry is marked aborted.
    (v1,) = _versions(registry, 1)
    move_aliases.fn(registry, NAME, {"challenger": v1, "champion": v1}, "release", "tester", "first")
    with pytest.raises(PromotionFailed, match="aliases restored"):
        move_aliases.fn(registry, NAME, {"challenger": v1, "champion": "99"}, "release", "tester", "broken")
    assert registry.aliases(NAME) == {"challenger": v1, "champion": v1}
    assert read_history(registry, NAME)[-1].status == "aborted"


def test_failed_first_move_deletes_alias_it_created(registry: Registry) -> None:
    (v1,) = _versions(registry, 1)
    with pytest.raises(PromotionFailed):
        move_aliases.fn(registry, NAME, {"challenger": v1, "champion": "42"}, "release", "tester", "broken")
    assert registry.aliases(NAME) == {}


def _pending(registry: Registry, alias: str, old: str | None, new: str) -> None:
    entry = HistoryEntry(
        id=f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-deadbeef",
        at=datetime.now(UTC),
        model_name=NAME,
        action="promote",
        actor="crashed",
        reason="killed mid-move",
        moves=(AliasMove(alias=alias, from_version=old, to_version=new),),
        status="pending",
    )
    registry.write_history(NAME, entry.id, entry.model_dump(mode="json"))


def test_interrupted_move_reads_back_as_what_the_aliases_say(registry: Registry) -> None:
    # Given a process killed after writing a pending entry: if the alias did not move, the entry reads as
    # aborted; if it did, as done. The history always agrees with the aliases.
    v1, v2 = _versions(registry, 2)
    registry.set_alias(NAME, "champion", v1)
    _pending(registry, "champion", v1, v2)
    assert read_history(registry, NAME)[-1].status == "aborted"
    registry.set_alias(NAME, "champion", v2)
    assert read_history(registry, NAME)[-1].status == "done"


def test_two_rollbacks_do_not_bounce_back(registry: Registry) -> None:
    # Given champions v1 -> v2 -> v3, when v3 is rolled back (to v2) and then v2 is rolled back,
    # then the second rollback goes to v1, never back to the bad v3.
    v1, v2, v3 = _versions(registry, 3)
    for version in (v1, v2, v3):
        move_aliases.fn(registry, NAME, {"champion": version}, "release", "tester", "release")

    def roll() -> str:
        history = read_history(registry, NAME)
        current = registry.aliases(NAME)["champion"]
        target = rollback_target(history, "champion", current, rolled_back_versions(registry, NAME, [v1, v2, v3]))
        registry.tag_version(NAME, current, {TAG_ROLLED_BACK: "test"})
        move_aliases.fn(registry, NAME, {"champion": target}, "rollback", "tester", "bad")
        return target

    assert roll() == v2
    assert roll() == v1
    with pytest.raises(RollbackImpossible, match="no earlier good champion"):
        roll()


def test_rollback_target_uses_champion_set_before_history() -> None:
    entry = HistoryEntry(
        id="1",
        at=datetime.now(UTC),
        model_name=NAME,
        action="release",
        actor="t",
        reason="r",
        moves=(AliasMove(alias="champion", from_version="4", to_version="5"),),
    )
    assert rollback_target([entry], "champion", "5", set()) == "4"


def _report(*passed: bool) -> GateReport:
    checks = tuple(Check(name=f"c{i}", passed=p) for i, p in enumerate(passed))
    return GateReport(model_name=NAME, version="1", checks=checks)


def test_promotion_decision_is_data() -> None:
    auto = decide_promotion(_report(True, True), "auto", "champion", "challenger")
    assert auto.move_champion and auto.move_challenger
    manual = decide_promotion(_report(True), "manual", "champion", "challenger")
    assert manual.move_challenger and not manual.move_champion
    failed = decide_promotion(_report(True, False), "auto", "champion", "challenger")
    assert not failed.move_challenger and not failed.move_champion and "c1" in failed.reason


def test_champion_view_compares_the_alias_with_what_serves(registry: Registry) -> None:
    # Given no champion, then v1 as champion: the view says none, serving it, or not serving it
    from tasks.served import champion_view

    (v1, v2) = _versions(registry, 2)
    assert champion_view(registry, NAME, "champion", v1).line(60).startswith("none: no version has the champion")
    registry.client.set_registered_model_alias(NAME, "champion", v1)
    assert champion_view(registry, NAME, "champion", v1).matches
    behind = champion_view(registry, NAME, "champion", v2)
    assert not behind.matches and behind.behind
    assert behind.line(60).startswith(f"v{v1}, not serving it: serving v{v2}")


def test_champion_view_reports_an_unreachable_registry_at_once_without_its_password() -> None:
    # Given a tracking server that is not there (MLflow's client would retry for minutes), when the view is read,
    # then it comes back with the error instead of raising, naming the server but not the password in its URL.
    from tasks.served import champion_view

    uri = "http://slipway:s3cret-pw@127.0.0.1:9"
    view = champion_view(Registry(tracking_uri=uri, registry_uri=uri, experiment="x"), NAME, "champion", "3")
    assert view.error is not None and not view.matches
    assert "127.0.0.1:9" in view.error and "s3cret-pw" not in view.error and "slipway:***@" in view.error
    assert view.line(60).startswith("unknown: the registry at http://slipway:***@127.0.0.1:9 could not be read")


def test_champion_view_does_not_create_a_sqlite_registry_that_is_not_there(tmp_path: Path) -> None:
    # Given a SQLite registry URI whose file does not exist, then the view says so and no file appears
    from tasks.served import champion_view

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    view = champion_view(Registry(tracking_uri=uri, registry_uri=uri, experiment="x"), NAME, "champion", "1")
    assert view.error is not None and "no MLflow registry at" in view.error and "does not exist" in view.error
    assert not (tmp_path / "mlflow.db").exists()
