"""The monitor's memory and its reading of the promotion history (pure file and list functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tasks.errors import MonitorStateError
from tasks.monitor import GuardState
from tasks.observe import (
    VerdictRecord,
    append_verdict,
    last_promotion_at,
    load_state,
    read_verdicts,
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
