"""The one load generator every HTTP peer gets: wrk with bench/wrk/post_json.lua POSTing a fixed JSON body.

wrk 4.x corrects its latency histogram for coordinated omission before the Lua `done` hook sees it: a response
slower than the run's mean interval per connection adds synthetic samples at every multiple of that interval
below it. So one 100 ms stall in a 1 ms-per-request run becomes ~100 samples between 1 and 100 ms, and p99
(and the mean) describe what a client sending at a steady rate would have seen, not only the requests sent.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.processes import BenchError

LUA_SCRIPT = Path(__file__).resolve().parent / "wrk" / "post_json.lua"
_RESULT = re.compile(r"^SLIPWAY_BENCH_RESULT (\{.*\})$", re.MULTILINE)
INSTALL_HINT = "install wrk (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk), or run `make bench`"


@dataclass(frozen=True)
class Load:
    """How hard and how long: wrk threads, open connections, seconds, per-request timeout."""

    threads: int
    connections: int
    duration_s: float
    timeout_s: float = 10.0


@dataclass(frozen=True)
class LoadResult:
    """What wrk measured: throughput, latency percentiles (ms), responses by status, socket errors."""

    requests: int
    duration_s: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    non2xx: int
    status: dict[str, int]
    socket_errors: dict[str, int]

    @property
    def socket_error_count(self) -> int:
        return sum(self.socket_errors.values())


def find_wrk() -> str:
    """Path of the wrk executable, or BenchError saying how to install it."""
    found = shutil.which("wrk")
    if found is None:
        raise BenchError(f"`wrk` is not on PATH: {INSTALL_HINT}")
    return found


def run_wrk(url: str, body_path: Path, load: Load) -> LoadResult:
    """Run wrk against `url` for `load.duration_s` and parse the line the Lua `done` hook prints."""
    command = [
        find_wrk(),
        f"-t{load.threads}",
        f"-c{load.connections}",
        f"-d{max(1, round(load.duration_s))}s",
        f"--timeout={max(1, round(load.timeout_s))}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        str(body_path),
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=load.duration_s + load.timeout_s + 30, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish: {' '.join(command)}") from exc
    found = _RESULT.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise BenchError(f"wrk failed (exit {done.returncode}): {' '.join(command)}\n{done.stdout}\n{done.stderr}")
    raw = json.loads(found.group(1))
    duration_s = raw["duration_us"] / 1e6
    latency = raw["latency_us"]
    errors = {k: int(v) for k, v in raw["errors"].items() if k != "status"}
    return LoadResult(
        requests=int(raw["requests"]),
        duration_s=duration_s,
        requests_per_s=raw["requests"] / duration_s if duration_s > 0 else 0.0,
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        mean_ms=latency["mean"] / 1000,
        # The Lua response() hook sees every answered request; wrk's own counter is the cross-check.
        non2xx=max(int(raw["non2xx"]), int(raw["errors"]["status"])),
        status={str(k): int(v) for k, v in sorted(raw["status"].items())},
        socket_errors=errors,
    )
