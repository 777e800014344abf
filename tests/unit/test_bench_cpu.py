"""The benchmark's reading of a case's CPU: disturbed by other work, or a server leaving a worker idle."""

from __future__ import annotations

import pytest

from bench.cpu import CpuUse
from bench.serving import NOISY_SHARE, UNDERUSED_SHARE


def case_cpu(server_cpu_s: float, loadgen_cpu_s: float, other_share: float = 0.01, wall_s: float = 10.0) -> CpuUse:
    """A case on 2 CPUs."""
    return CpuUse(wall_s, server_cpu_s, loadgen_cpu_s, other_share, cpus=2)


@pytest.mark.parametrize(
    ("what", "workers", "server_cpu_s", "loadgen_cpu_s", "wall_s", "underused"),
    [
        # Cases of stop 23's two runs with the example (BENCHMARKS.md), as their JSON recorded them
        ("mlflow-onnx at one row, one worker idle (761 req/s)", 2, 10.27, 0.35, 10.03, True),
        ("mlflow-onnx at one row, both workers busy (1,294 req/s)", 2, 17.0, 0.67, 10.05, False),
        ("slipway at one row, wrk taking a fifth of the machine", 2, 15.36, 4.07, 10.03, False),
        ("slipway at 100 rows", 2, 18.19, 1.39, 10.02, False),
        ("mlflow-sklearn at 100 rows", 2, 18.8, 0.17, 10.08, False),
        ("the one-worker ASGI app at one row", 1, 9.91, 2.37, 10.01, False),
        ("a one-worker server at a third of its core", 1, 3.0, 0.5, 10.0, True),
    ],
)
def test_a_server_leaving_a_worker_idle_is_underused(
    what: str, workers: int, server_cpu_s: float, loadgen_cpu_s: float, wall_s: float, underused: bool
) -> None:
    cpu = case_cpu(server_cpu_s, loadgen_cpu_s, wall_s=wall_s)
    assert cpu.underused(workers, UNDERUSED_SHARE) is underused, (what, cpu.server_share, cpu.capacity(workers))
    assert not cpu.disturbed(workers, NOISY_SHARE)  # nothing else ran: a low share is the server's own doing


def test_capacity_leaves_wrk_its_share_only_when_the_workers_fill_the_machine() -> None:
    cpu = case_cpu(15.0, 4.0)
    assert cpu.capacity(2) == pytest.approx(1 - 0.2)
    assert cpu.capacity(4) == pytest.approx(1 - 0.2)
    assert cpu.capacity(1) == pytest.approx(0.5)  # wrk runs on the core the one worker leaves


def test_other_work_disturbs_only_a_server_it_kept_from_its_cpu() -> None:
    assert case_cpu(10.0, 1.0, other_share=0.4).disturbed(2, NOISY_SHARE)
    assert not case_cpu(18.0, 1.0, other_share=0.4).disturbed(2, NOISY_SHARE)
    assert not case_cpu(9.9, 1.0, other_share=0.4).disturbed(1, NOISY_SHARE)
