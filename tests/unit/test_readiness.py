"""serving.readiness: which workers of a server have loaded, from their markers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.readiness import WorkerReadiness, expected_workers, remove_stale_folders, served_workers


def _exited_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_no_worker_is_ready_before_its_marker_and_each_counts_once_marked(tmp_path: Path) -> None:
    readiness = WorkerReadiness(tmp_path / "server", workers=3)
    assert readiness.waiting() == [1, 2, 3]
    readiness.mark_ready(2, os.getpid())
    assert readiness.waiting() == [1, 3]
    readiness.mark_ready(1, os.getpid())
    readiness.mark_ready(3, os.getpid())
    assert readiness.waiting() == []


def test_a_marker_of_an_exited_worker_does_not_count(tmp_path: Path) -> None:
    # A worker that died (and is being restarted) left its marker behind.
    readiness = WorkerReadiness(tmp_path, workers=2)
    readiness.mark_ready(1, os.getpid())
    readiness.mark_ready(2, _exited_pid())
    assert readiness.waiting() == [2]
    readiness.mark_ready(2, os.getpid())  # the restarted worker has loaded
    assert readiness.waiting() == []


def test_a_stopping_worker_is_no_longer_ready_and_the_last_one_removes_the_folder(tmp_path: Path) -> None:
    readiness = WorkerReadiness(tmp_path / "server", workers=2)
    readiness.mark_ready(1, os.getpid())
    readiness.mark_ready(2, os.getpid())
    readiness.unmark(1)
    assert readiness.waiting() == [1] and readiness.folder.is_dir()
    readiness.unmark(2)
    assert not readiness.folder.exists()


def test_an_unreadable_marker_is_not_ready(tmp_path: Path) -> None:
    readiness = WorkerReadiness(tmp_path, workers=1)
    readiness.marker(1).write_text("", encoding="ascii")  # e.g. written by something else
    assert readiness.waiting() == [1]


def test_only_a_served_worker_waits_for_its_siblings() -> None:
    assert WorkerReadiness.of_server(None, 2) is None
    served = WorkerReadiness.of_server(1, 2)
    assert served is not None and served.folder.name == f"slipway-ready-{os.getppid()}"


@pytest.mark.parametrize(("setting", "expected"), [(1, 1), (3, 3)])
def test_a_number_of_workers_is_taken_as_it_is(setting: int, expected: int) -> None:
    assert expected_workers(setting) == expected


def test_cpu_count_is_resolved_as_bentoml_resolves_it() -> None:
    from bentoml._internal.resource import CpuResource

    assert expected_workers("cpu_count") == (int(CpuResource.from_system()) or 1) >= 1


def test_outside_a_configured_bentoml_the_services_own_setting_counts() -> None:
    assert served_workers("not-a-configured-service", 3) == 3


def test_folders_of_servers_that_are_gone_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    # Given the folder of a killed server (its markers left behind), a live server's, and an unrelated one
    gone = WorkerReadiness(tmp_path / f"slipway-ready-{_exited_pid()}", workers=1)
    gone.mark_ready(1, _exited_pid())
    live = WorkerReadiness(tmp_path / f"slipway-ready-{os.getpid()}", workers=1)
    live.mark_ready(1, os.getpid())
    other = tmp_path / "slipway-ready-notes"
    other.mkdir()
    # Then only the gone server's folder is removed
    assert remove_stale_folders(tmp_path) == [gone.folder]
    assert not gone.folder.exists() and live.waiting() == [] and other.is_dir()
