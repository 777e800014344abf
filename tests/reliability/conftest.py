"""The `figures` fixture: each reliability test says what it tried, how many times and what had to hold, with the
numbers it measured; the fixture appends that, with the test's real outcome, to the JSON-lines file named by
SLIPWAY_RELIABILITY_RESULTS (`make reliability` sets it and renders RELIABILITY.md from it with
`python -m tests.reliability.report`). Without the variable nothing is written: the tests run as any others.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

RESULTS_ENV = "SLIPWAY_RELIABILITY_RESULTS"


@dataclass
class Figures:
    """What one test tried and measured; `item` is a key of tests.reliability.report.ITEMS."""

    item: str
    tried: str = ""
    times: int = 0
    figures: dict[str, Any] = field(default_factory=dict)

    def add(self, **figures: Any) -> None:
        """Record measured numbers (shown in the table in the order given)."""
        self.figures.update(figures)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    """A Figures to fill; written with the test's outcome (passed, failed, skipped) when the test ends."""
    marker = request.node.get_closest_marker("reliability")
    assert marker is not None and marker.args, "mark the test @pytest.mark.reliability('<item key>')"
    record = Figures(item=str(marker.args[0]))
    started = time.monotonic()
    yield record
    target = os.environ.get(RESULTS_ENV)
    if not target:
        return
    setup = getattr(request.node, "rep_setup", None)
    call = getattr(request.node, "rep_call", None)
    if call is not None:
        outcome = call.outcome
        detail = str(call.longrepr)[-600:] if call.failed else ""
    elif setup is not None and setup.skipped:
        outcome, detail = "skipped", str(setup.longrepr)[-300:]
    else:
        outcome, detail = "error", str(getattr(setup, "longrepr", ""))[-600:]
    if outcome == "skipped" and call is not None:
        detail = str(call.longrepr)[-300:]
    row = {
        "item": record.item,
        "test": request.node.nodeid,
        "tried": record.tried,
        "times": record.times,
        "figures": record.figures,
        "outcome": outcome,
        "detail": detail,
        "seconds": round(time.monotonic() - started, 1),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(row, default=str) + "\n")
