"""Faults in the registry's hands: a process killed (SIGKILL) while it moves aliases, on a real MLflow registry.

Proves: whenever the kill lands (before, between or after the alias writes and the history writes), the
champion afterwards is the old version or the new one, never missing, and the promotion history, as
`read_history` reconciles an interrupted entry, puts every alias where the registry has it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.conftest import Figures

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NAME = "kill-test-model"
# Moves aliases back and forth until killed; prints a line per completed move.
_MOVER = """
import sys
from tasks.registry import move_aliases
from tasks.resources import Registry

uri, name, aliases = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
registry = Registry(tracking_uri=uri, registry_uri=uri, experiment="kill-test")
registry.aliases(name)
print("ready", flush=True)
done = 0
while True:
    current = registry.aliases(name).get(aliases[-1])
    target = "2" if current == "1" else "1"
    move_aliases.fn(registry, name, {a: target for a in aliases}, "promote", "kill-test", f"move {done}")
    done += 1
    print(done, flush=True)
"""


def _mover(uri: str, aliases: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return subprocess.Popen(
        [sys.executable, "-c", _MOVER, uri, NAME, ",".join(aliases)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


@pytest.mark.reliability("kill-promotion")
@pytest.mark.parametrize(
    "aliases", [["champion"], ["challenger", "champion"]], ids=["promote-champion", "release-both-aliases"]
)
def test_a_promotion_killed_at_any_point_leaves_the_champion_and_its_history_consistent(
    registry: Any, figures: Figures, aliases: list[str]
) -> None:
    from tasks.registry import champion_in_history, move_aliases, read_history

    # Given a model with two versions and every alias on v1 (the history records it)
    client = registry.client
    client.create_registered_model(NAME)
    for _ in range(2):
        client.create_model_version(NAME, source=str(registry.artifact_root))
    move_aliases.fn(registry, NAME, {a: "1" for a in aliases}, "promote", "test", "start")
    uri = registry.tracking_uri
    rng = random.Random(20261130)
    trials = 12
    kills_mid_move = 0
    partial = 0  # killed between two alias writes
    moves_done = 0
    problems: list[str] = []
    for trial in range(trials):
        # When a process moving the aliases back and forth is killed at a random moment
        mover = _mover(uri, aliases)
        assert mover.stdout is not None
        ready = mover.stdout.readline().strip()
        assert ready == "ready", ready + mover.stdout.read()[-2000:]
        time.sleep(rng.uniform(0.05, 1.2))
        mover.send_signal(signal.SIGKILL)
        output, _ = mover.communicate(timeout=30)
        moves_done += sum(line.strip().isdigit() for line in output.splitlines())
        raw = registry.read_history(NAME)
        current = registry.aliases(NAME)
        if raw[-1]["status"] == "pending":
            kills_mid_move += 1
            applied = sum(current.get(m["alias"]) == m["to_version"] for m in raw[-1]["moves"])
            partial += 0 < applied < len(raw[-1]["moves"])
        # Then every alias is on v1 or v2, and the reconciled history puts each where the registry has it
        history = read_history(registry, NAME)
        for alias in aliases:
            if current.get(alias) not in ("1", "2"):
                problems.append(f"trial {trial}: {alias} is {current.get(alias)!r}")
            if champion_in_history(history, alias) != current.get(alias):
                problems.append(
                    f"trial {trial}: history puts {alias} on v{champion_in_history(history, alias)}, the registry "
                    f"on v{current.get(alias)} (last entry {raw[-1]['status']}: {raw[-1]['moves']})"
                )
        if any(e.status == "pending" for e in history):
            problems.append(f"trial {trial}: a pending entry was left unreconciled")
    figures.tried = (
        f"SIGKILL of a process moving {' and '.join(aliases)} between v1 and v2 in a loop, at a random moment "
        "(0.05-1.2 s after start), on a SQLite MLflow registry"
    )
    figures.times = trials
    figures.add(
        completed_moves_before_kills=moves_done,
        kills_inside_a_move=kills_mid_move,
        kills_between_two_alias_writes=partial,
        inconsistent_after_kill=len(problems),
    )
    assert not problems, "\n".join(problems)
