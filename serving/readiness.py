"""Ready means every worker has loaded its model, not only the one that answered /readyz.

BentoML answers /readyz from whichever worker accepts the connection, as soon as that worker is up. Its other
workers may still be loading: a client (or HAProxy, or the benchmark) that opens its connections at that moment
hands them all to the first worker and keeps them there for their whole life, so one worker serves everything
while the other idles (seen here with wrk started right after /readyz: 1,232 against 2,075 req/s at 100 rows,
and the busy worker's inference-log queue overflowing). Each worker drops a marker holding its pid when its
__init__ has finished; the service's `__is_ready__` hook answers ready once every worker's marker names a live
process, so a worker that died and is being restarted counts as not ready until it has loaded again.

The markers live in a folder named after the `bentoml serve` process (the workers' parent) in the temp folder,
so two servers never see or clear each other's (the Prometheus folder under BENTOML_HOME is emptied by every
server started on that home). A worker removes its marker when it stops gracefully; the folders of servers that
are gone without that (killed) are removed by the next server's first worker. The number of workers waited
for is the one `bentoml serve` started: the service's setting (SLIPWAY_WORKERS, `serving.workers`) as BentoML
merged it with its own configuration (a BENTOML_CONFIG file or BENTOML_CONFIG_OPTIONS may override
`services.slipway.workers`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

_LOG = logging.getLogger("slipway.serving")
_MARKER = "slipway-worker-{index}.ready"
_FOLDER_PREFIX = "slipway-ready-"


def expected_workers(workers: int | Literal["cpu_count"]) -> int:
    """How many workers `bentoml serve` starts for this setting: "cpu_count" resolved as BentoML resolves it (the
    CPUs this process may use, cgroup limits included)."""
    if workers != "cpu_count":
        return workers
    try:
        from bentoml._internal.resource import CpuResource

        return int(CpuResource.from_system()) or 1
    except ImportError:  # pragma: no cover - a BentoML without that module: what Python sees
        return len(os.sched_getaffinity(0)) or 1


def served_workers(service_name: str, setting: int | Literal["cpu_count"]) -> int:
    """How many workers `bentoml serve` starts for the service: its `workers` as BentoML's configuration holds it
    (the service's own setting under whatever BentoML's configuration overrides), resolved as BentoML's allocator
    resolves it (unset: one); the service's own `setting` where that configuration cannot be read."""
    try:
        from bentoml._internal.configuration.containers import BentoMLContainer

        configured = BentoMLContainer.config.services[service_name].get().get("workers")
    except (ImportError, KeyError, AttributeError, TypeError):  # pragma: no cover - another BentoML layout
        configured = setting
    return expected_workers(configured or 1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_folders(temp: Path) -> list[Path]:
    """Remove the marker folders of servers whose `bentoml serve` process is gone (killed before its workers could
    clear them); the folders removed."""
    removed = []
    for folder in temp.glob(f"{_FOLDER_PREFIX}*"):
        pid = folder.name.removeprefix(_FOLDER_PREFIX)
        if not pid.isdigit() or _alive(int(pid)):
            continue
        for marker in folder.glob("*"):
            marker.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # another server's first worker got there first
            folder.rmdir()
            removed.append(folder)
    return removed


@dataclass(frozen=True)
class WorkerReadiness:
    """The ready markers of one server's workers (1-based indexes, as BentoML numbers them)."""

    folder: Path
    workers: int

    @classmethod
    def of_server(cls, worker_index: int | None, workers: int) -> WorkerReadiness | None:
        """The readiness of the `bentoml serve` this worker belongs to, or None outside a served worker (no
        worker index): then nothing waits."""
        if worker_index is None:
            return None
        temp = Path(tempfile.gettempdir())
        if worker_index == 1:
            remove_stale_folders(temp)
        return cls(temp / f"{_FOLDER_PREFIX}{os.getppid()}", workers)

    def marker(self, index: int) -> Path:
        return self.folder / _MARKER.format(index=index)

    def mark_ready(self, index: int, pid: int) -> None:
        """Record that worker `index` (process `pid`) has loaded; atomic, so a reader never sees half a pid."""
        self.folder.mkdir(mode=0o700, exist_ok=True)
        path = self.marker(index)
        partial = path.with_name(f".{path.name}.{pid}")
        partial.write_text(str(pid), encoding="ascii")
        os.replace(partial, path)
        waiting = self.waiting()
        _LOG.info(
            "worker %d of %d ready (pid %d)%s",
            index,
            self.workers,
            pid,
            f"; waiting for workers {waiting}" if waiting else "; all workers ready",
        )

    def unmark(self, index: int) -> None:
        """Worker `index` is stopping: its marker goes, and the folder with the last one."""
        self.marker(index).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # other workers' markers are still there
            self.folder.rmdir()

    def waiting(self) -> list[int]:
        """The workers not ready: no marker yet, or the process it names has exited."""
        return [index for index in range(1, self.workers + 1) if not self._ready(index)]

    def _ready(self, index: int) -> bool:
        try:
            pid = int(self.marker(index).read_text(encoding="ascii"))
        except (FileNotFoundError, ValueError):
            return False
        return _alive(pid)
