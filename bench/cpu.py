"""CPU the benchmark does not own: how busy the machine is with other work, before and during a case.

On a shared machine another process's burst lowers every number of the case it lands in. Before a case the
benchmark waits (within a budget) for the machine to be quiet, and during it counts the CPU seconds spent by
anything but the server under test, wrk and this process, as a share of the machine. A case with a high
share is marked, so a reader knows which figures to distrust.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

import psutil


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle, summed over CPUs."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _tree_cpu_seconds(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            cpu = process.cpu_times()
            total += cpu.user + cpu.system
        except psutil.NoSuchProcess:
            continue
    return total


def _own_and_waited_children_seconds() -> float:
    """CPU of this process plus its waited-for children (wrk runs end with a wait, servers do not)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def other_busy_share(interval_s: float = 1.0) -> float:
    """Share of the machine (0..1) busy with work other than this process during the next `interval_s`."""
    busy, mine, started = _busy_seconds(), _own_and_waited_children_seconds(), time.perf_counter()
    time.sleep(interval_s)
    wall = time.perf_counter() - started
    other = (_busy_seconds() - busy) - (_own_and_waited_children_seconds() - mine)
    return max(0.0, other / (wall * (os.cpu_count() or 1)))


class QuietWaiter:
    """Waits until the machine is quiet (other work under `threshold` for two 1 s samples), within a total budget
    that also pays for measuring disturbed cases again."""

    def __init__(self, threshold: float, budget_s: float, per_wait_s: float = 20.0) -> None:
        self.threshold = threshold
        self.budget_s = budget_s
        self.per_wait_s = per_wait_s  # so one long wait cannot spend the budget of every later case
        self.spent_s = 0.0

    @property
    def remaining_s(self) -> float:
        return max(0.0, self.budget_s - self.spent_s)

    def charge(self, seconds: float) -> None:
        """Count time spent because of other work (e.g. measuring a disturbed case again) against the budget."""
        self.spent_s += seconds

    def wait(self) -> tuple[float, float]:
        """(seconds waited, last measured share of other work); returns at once when the budget is spent."""
        started = time.perf_counter()
        quiet_samples = 0
        share = other_busy_share()
        while True:
            quiet_samples = quiet_samples + 1 if share < self.threshold else 0
            waited = time.perf_counter() - started
            if quiet_samples >= 2 or waited >= self.per_wait_s or self.spent_s + waited >= self.budget_s:
                self.spent_s += waited
                return waited, share
            share = other_busy_share()


@dataclass(frozen=True)
class CpuUse:
    """CPU during a case: the server tree's seconds, wrk's plus this process's, and everything else's share."""

    wall_s: float
    server_cpu_s: float
    loadgen_cpu_s: float
    other_share: float  # other work as a share of the whole machine, 0..1
    cpus: int

    @property
    def server_share(self) -> float:
        return self.server_cpu_s / (self.wall_s * self.cpus)

    @property
    def loadgen_share(self) -> float:
        return self.loadgen_cpu_s / (self.wall_s * self.cpus)

    def capacity(self, workers: int) -> float:
        """The share of the machine a server of `workers` workers could use beside wrk and this process."""
        capacity = min(workers, self.cpus) / self.cpus
        if workers >= self.cpus:
            capacity -= self.loadgen_share  # wrk and the server share the machine
        return capacity

    def disturbed(self, workers: int, threshold: float) -> bool:
        """Other work took more than `threshold` of the machine while the server got under 90% of the CPU its
        workers could use (a one-worker server leaves the other cores idle: others using them is no harm)."""
        return self.other_share > threshold and self.server_share < 0.9 * self.capacity(workers)

    def underused(self, workers: int, threshold: float) -> bool:
        """Under a load meant to saturate it, the server used less than `threshold` of the CPU its workers could
        use: one of its workers sat (nearly) idle, e.g. the kernel handed another worker of the shared listening
        socket all of wrk's connections. Its req/s is then a worker short, which flatters whoever is compared
        with it (seen: mlflow-onnx at 51% of the machine instead of its usual 85-90%, at half its req/s)."""
        return self.server_share < threshold * self.capacity(workers)


class CpuAccount:
    """Context manager measuring CpuUse around one load run against the server process tree `pid`."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.result: CpuUse | None = None

    def __enter__(self) -> CpuAccount:
        self._busy = _busy_seconds()
        self._server = _tree_cpu_seconds(self._pid)
        self._mine = _own_and_waited_children_seconds()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._started
        busy = _busy_seconds() - self._busy
        server = _tree_cpu_seconds(self._pid) - self._server
        mine = _own_and_waited_children_seconds() - self._mine
        other = max(0.0, busy - server - mine)
        cpus = os.cpu_count() or 1
        self.result = CpuUse(
            wall_s=wall, server_cpu_s=server, loadgen_cpu_s=mine, other_share=other / (wall * cpus), cpus=cpus
        )
