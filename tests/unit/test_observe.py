"""The monitor's memory, its reading of the promotion history, and the outcome of a retrain it started."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasks.errors import MonitorStateError
from tasks.monitor import GuardState, settle_retrain
from tasks.observe import (
    VerdictRecord,
    append_verdict,
    last_promotion_at,
    load_state,
    read_verdicts,
    retrain_outcome,
    save_state,
)
from tasks.registry import champion_in_history
from tasks.types import AliasMove, HistoryEntry

T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def entry(minutes: int, action: str, to: str, status: str = "done", alias: str = "champion") -> HistoryEntry:
    return HistoryEntry(
        id=f"e{minutes}",
        at=T0 + timedelta(minutes=minutes),
        model_name="m",
        action=action,  # type: ignore[arg-type]
        actor="test",
        reason="",
        moves=(AliasMove(alias=alias, from_version=None, to_version=to),),
        status=status,  # type: ignore[arg-type]
    )


def test_state_round_trips_and_starts_fresh(tmp_path: Path) -> None:
    assert load_state(tmp_path) == GuardState()
    state = GuardState(last_action="retrain", last_action_at=T0, retrains=(T0,))
    save_state(tmp_path, state)
    assert load_state(tmp_path) == state


def test_corrupt_state_is_an_error_naming_the_file_not_a_silent_reset(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(MonitorStateError, match=r"(?s)state\.json.*move it away"):
        load_state(tmp_path)


def test_last_promotion_ignores_rollbacks_aborted_moves_and_other_aliases() -> None:
    history = [
        entry(0, "release", "1"),
        entry(10, "promote", "2"),
        entry(20, "rollback", "1"),
        entry(30, "promote", "3", status="aborted"),
        entry(40, "release", "4", alias="challenger"),
    ]
    assert last_promotion_at(history, "champion") == T0 + timedelta(minutes=10)
    assert last_promotion_at([*history, entry(50, "manual", "2")], "champion") == T0 + timedelta(minutes=50)
    assert last_promotion_at([], "champion") is None


def test_champion_in_history_is_the_last_done_move_of_the_alias() -> None:
    history = [entry(0, "release", "1"), entry(10, "rollback", "2"), entry(20, "promote", "3", status="aborted")]
    assert champion_in_history(history, "champion") == "2"
    assert champion_in_history([entry(0, "release", "5", alias="challenger")], "champion") is None


def test_verdict_index_skips_a_damaged_line(tmp_path: Path) -> None:
    record = VerdictRecord(
        decided_at=T0,
        status="ok",
        action="none",
        reason="no drift",
        model_version="1",
        rows=500,
        drift_share=0.1,
        report_dir=tmp_path / "r",
        html=None,
    )
    append_verdict(tmp_path, record)
    with (tmp_path / "verdicts.jsonl").open("a") as out:
        out.write("{truncated\n")
    append_verdict(tmp_path, record.model_copy(update={"status": "drift"}))
    assert [r.status for r in read_verdicts(tmp_path)] == ["ok", "drift"]


# --- a retrain started as a deployment run ------------------------------------------------------------------


def pending(promoted_minutes: int | None) -> GuardState:
    """An episode whose retrain started at T0 as run r-1, last promoted `promoted_minutes` after T0."""
    return GuardState(
        drift_episode_id="drift-1",
        episode_retrained_at=T0,
        retrain_run_id="r-1",
        last_promotion_at=None if promoted_minutes is None else T0 + timedelta(minutes=promoted_minutes),
    )


def test_a_retrain_run_still_going_changes_nothing() -> None:
    assert settle_retrain(pending(None), "running", "RUNNING") == (pending(None), None)
    assert settle_retrain(GuardState(), "failed", "FAILED") == (GuardState(), None)  # no run pending


def test_a_promoted_retrain_run_is_settled_and_the_breaker_stays_closed() -> None:
    state, note = settle_retrain(pending(5), "completed", "COMPLETED")
    assert (state.retrain_run_id, state.last_retrain_cleared_drift, state.breaker_open) == (None, None, False)
    assert note == "retrain run r-1 completed and was promoted"


@pytest.mark.parametrize(
    ("outcome", "promoted", "why"),
    [
        ("failed", 5, "ended CRASHED"),  # promoted by someone else meanwhile: the run itself still failed
        ("completed", None, "completed without a promotion"),
        ("completed", -5, "completed without a promotion"),  # the last promotion is older than the retrain
    ],
)
def test_a_failed_or_unpromoted_retrain_run_opens_the_breaker(outcome: str, promoted: int | None, why: str) -> None:
    state, note = settle_retrain(pending(promoted), outcome, "CRASHED")  # type: ignore[arg-type]
    assert (state.retrain_run_id, state.breaker_open) == (None, True)
    assert note == f"retrain run r-1 {why}: circuit breaker open"


@pytest.mark.slow
def test_retrain_outcome_reads_the_run_state_from_prefect(prefect_harness: None) -> None:
    """Given real flow runs on a Prefect API (one completed, one failed) and an id it never saw, then each
    outcome is read as the monitor will settle it."""
    import uuid

    from prefect import flow

    @flow
    def fine() -> int:
        return 1

    @flow
    def broken() -> None:
        raise RuntimeError("training data unreachable")

    done = fine(return_state=True)
    failed = broken(return_state=True)
    assert retrain_outcome(str(done.state_details.flow_run_id)) == ("completed", "COMPLETED")
    assert retrain_outcome(str(failed.state_details.flow_run_id)) == ("failed", "FAILED")
    assert retrain_outcome(str(uuid.uuid4())) == ("failed", "unknown to the Prefect API")
