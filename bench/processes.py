"""Servers the benchmark starts and always stops: own process group, loopback port, log file, memory of the tree."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx


class BenchError(RuntimeError):
    """A peer could not be started, answered wrongly, or the load generator failed; the message says which."""


@dataclass(frozen=True)
class Server:
    """A running server: its base URL, process and log."""

    name: str
    url: str
    process: subprocess.Popen[bytes] = field(compare=False, hash=False)
    log_path: Path
    started_at: float  # time.perf_counter() when it was started

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.is_file() else ""


@dataclass(frozen=True)
class Memory:
    """Resident memory of a process tree in MiB: RSS summed over processes, and PSS (shared pages split)."""

    processes: int
    rss_mib: float
    pss_mib: float | None


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process_group(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM the process group (server and its workers), then SIGKILL whatever is left after `grace_s`."""
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
    # Workers may outlive their parent (or ignore SIGTERM): the group is killed in every case.
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(timeout=grace_s)


def start_server(name: str, command: list[str], env: dict[str, str], port: int, log_path: Path) -> Server:
    """Start `command` in its own process group (so stopping it reaches its workers), output to `log_path`.

    The caller must stop it with stop_process_group, whatever happens (register it before doing anything else).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started_at = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return Server(name, f"http://127.0.0.1:{port}", process, log_path, started_at=started_at)


def wait_all_ready(servers: dict[Server, str], timeout_s: float) -> dict[str, float]:
    """Poll each server's ready path (GET, 200) round-robin; seconds from start to ready, by server name.

    Raises BenchError naming the server (with its log) if one exits or is not ready within `timeout_s`.
    """
    ready: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while len(ready) < len(servers):
            for server, path in servers.items():
                if server.name in ready:
                    continue
                if server.process.poll() is not None:
                    raise BenchError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
                try:
                    if client.get(f"{server.url}{path}").status_code == 200:
                        ready[server.name] = time.perf_counter() - server.started_at
                except httpx.TransportError:
                    pass
            if time.monotonic() > deadline:
                late = [s for s in servers if s.name not in ready]
                raise BenchError(
                    f"not ready after {timeout_s:.0f} s: {[s.name for s in late]}\n"
                    + "\n".join(f"--- {s.name} ---\n{s.log_tail()}" for s in late)
                )
            time.sleep(0.25)
    return ready


def tree_memory(pid: int, with_pss: bool = True) -> Memory:
    """RSS (and PSS) of a process and all its descendants (psutil; PSS reads /proc/<pid>/smaps, which is slow)."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return Memory(processes=0, rss_mib=0.0, pss_mib=None)
    rss = 0
    pss: int | None = 0 if with_pss else None
    alive = 0
    for process in processes:
        try:
            rss += process.memory_info().rss
            alive += 1
            if pss is not None:
                pss += getattr(process.memory_full_info(), "pss", 0)
        except psutil.AccessDenied:
            pss = None
        except psutil.NoSuchProcess:
            continue
    return Memory(processes=alive, rss_mib=rss / 2**20, pss_mib=None if pss is None else pss / 2**20)


class PeakMemory:
    """Samples a process tree's RSS in a background thread while a load runs; `peak` is the largest sum seen."""

    def __init__(self, pid: int, every_s: float = 1.0) -> None:
        self._pid = pid
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)
        self.peak_rss_mib = 0.0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss_mib = max(self.peak_rss_mib, tree_memory(self._pid, with_pss=False).rss_mib)
            self._stop.wait(self._every_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
