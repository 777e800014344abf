"""An exclusive lock on a file, held for a block: one release, deploy or `slipway up` at a time.

A flock, so the kernel drops it when its holder dies (a killed process never blocks the next one), and it
works across processes on one machine or a shared filesystem. The holder writes its pid into the file, so one
who waits can be told whom it waits for.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path


@contextmanager
def file_lock(
    path: Path,
    timeout_s: float,
    on_timeout: Callable[[str], Exception],
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold the flock of `path` for the block. While another holds it, `on_wait(holder)` once (on the second
    try: a holder that has just taken the lock may not have written its pid yet); after `timeout_s`, raise
    `on_timeout(holder)`. `holder` is what the holder wrote ("pid 123 since ..."), or "another process"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with path.open("a+", encoding="utf-8") as handle:
        attempts = 0
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                if time.monotonic() - started > timeout_s:
                    raise on_timeout(holder) from None
                if attempts == 1 and on_wait is not None:
                    on_wait(holder)
                attempts += 1
                time.sleep(0.2)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} since {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
            handle.flush()
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
