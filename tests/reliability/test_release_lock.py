"""The per-model lock that serializes releases, promotions and rollbacks (the fast half of `concurrent-releases`;
the live half, two release flows at once, is in test_loop_faults).

Proves: two holders of one model's lock never overlap, the one that waits is told who holds it, a lock held by a
process that dies is free at once, and a wait past the timeout is a RegistryError naming the holder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tasks.errors import RegistryError
from tasks.registry import model_lock


def test_two_holders_never_overlap_and_the_waiter_is_told(tmp_path: Path) -> None:
    spans: list[tuple[str, float, float]] = []
    waits: list[str] = []

    def hold(name: str) -> None:
        with model_lock(tmp_path, "m", on_wait=waits.append):
            started = time.monotonic()
            time.sleep(0.3)
            spans.append((name, started, time.monotonic()))

    threads = [threading.Thread(target=hold, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (_, _, first_end), (_, second_start, _) = sorted(spans, key=lambda s: s[1])
    assert second_start >= first_end
    assert len(waits) == 1 and f"pid {os.getpid()}" in waits[0]


def test_a_lock_whose_holder_died_is_free(tmp_path: Path) -> None:
    # Given a process that takes the lock and is killed while holding it
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tasks.registry import model_lock\n"
         f"with model_lock(__import__('pathlib').Path({str(tmp_path)!r}), 'm'):\n"
         "    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(RegistryError, match=r"holds .*m\.lock \(pid"), model_lock(tmp_path, "m", timeout_s=0.5):
        pass
    holder.kill()
    holder.wait(timeout=10)
    # Then the next one gets it at once
    started = time.monotonic()
    with model_lock(tmp_path, "m", timeout_s=5):
        assert time.monotonic() - started < 1.0
