"""Render RELIABILITY.md from the JSON lines the reliability tests recorded (tests/reliability/conftest.py).

    python -m tests.reliability.report RESULTS.jsonl RELIABILITY.md

Every item of issue 6 gets a row, in the issue's order: what was tried, how many times, what had to hold, whether
it held (the test's real outcome) and the figures the test measured. An item no test recorded says "not tried".
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Item:
    area: str
    claim: str  # what must hold, as the issue says it


ITEMS: dict[str, Item] = {
    "schemathesis": Item(
        "bad input", "generated requests against the served OpenAPI document: 0 5xx, 0 schema violations"
    ),
    "bad-config": Item("bad input", "malformed and hostile configs refused before any work, naming file and field"),
    "corrupt-onnx": Item("bad input", "corrupt or truncated ONNX files refused with a clear error, nothing changed"),
    "corrupt-bento": Item("bad input", "corrupt or tampered Bento models refused before serving changes"),
    "signature-mismatch": Item(
        "bad input", "a model whose signature does not match its data refused, registry unchanged"
    ),
    "load": Item(
        "load",
        "60 s at the benchmark's top throughput: 0 errors, inference-log rows = successful responses, RSS +<10%",
    ),
    "mlflow-down": Item(
        "faults",
        "MLflow server stops mid-release: clear error or retry, registry unchanged, a re-run completes",
    ),
    "kill-promotion": Item(
        "faults", "process killed during a promotion: champion old or new, history agrees with the aliases"
    ),
    "kill-worker": Item("faults", "a serving worker killed: replaced, requests resume without a hand restart"),
    "concurrent-releases": Item(
        "faults", "two releases of one model at once: serialized, both recorded, no lost entry"
    ),
    "log-unwritable": Item(
        "faults", "inference-log store unwritable: serving continues, loss counted in a metric and reported by monitor"
    ),
    "monitor-serving-down": Item(
        "faults", "monitoring while serving is down: verdict 'serving unreachable', no retrain"
    ),
    "auth": Item("security", "keyless and wrong-key requests get 401; the key is never logged"),
    "secrets-scan": Item(
        "security", "no configured secret in flow-run parameters, logs, MLflow params/tags, Prefect artifacts"
    ),
    "secrets-source": Item("security", "API keys and database passwords only from the environment or a secrets file"),
    "loopback": Item("security", "every server slipway starts binds 127.0.0.1 by default"),
    "input-limits": Item("security", "rows per request and body size limits enforced"),
    "artifact-hash": Item(
        "security", "Bento and ONNX loaded only from the registry's recorded location, hash checked against release"
    ),
}

RESULT_WORDS = {"passed": "held", "failed": "**did not hold**", "skipped": "not tried (skipped)", "error": "**error**"}


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The recorded rows; a damaged line is an error (the table must not quietly lose a result)."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise SystemExit(f"{path}:{number}: not a JSON line ({exc})") from None
    return rows


def latest_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per test: a test run again (after a fix) replaces its earlier row."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        latest.pop(str(row.get("test")), None)
        latest[str(row.get("test"))] = row
    return list(latest.values())


def _figures(figures: dict[str, Any]) -> str:
    parts = []
    for key, value in figures.items():
        if isinstance(value, float):
            value = f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        parts.append(f"{key}: {value}")
    return "; ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def render(rows: Sequence[dict[str, Any]], preamble: str, generated_at: datetime) -> str:
    """The whole RELIABILITY.md text: the preamble, then one table row per (item, test)."""
    rows = latest_rows(rows)
    by_item: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_item.setdefault(str(row.get("item")), []).append(row)
    unknown = sorted(set(by_item) - set(ITEMS))
    lines = [
        preamble.rstrip(),
        "",
        f"## Results (table written {generated_at:%Y-%m-%d %H:%M} UTC; each row from its test's last run)",
        "",
        "| area | must hold | what was tried | times | result | figures | test |",
        "|---|---|---|---:|---|---|---|",
    ]
    for key, item in ITEMS.items():
        found = by_item.get(key)
        if not found:
            lines.append(f"| {item.area} | {_cell(item.claim)} | not tried | 0 | not tried | | |")
            continue
        for row in found:
            result = RESULT_WORDS.get(str(row.get("outcome")), str(row.get("outcome")))
            test = str(row.get("test", "")).split("::")[-1]
            tried, times, figures = _cell(str(row.get("tried", ""))), int(row.get("times", 0)), row.get("figures") or {}
            at = str(row.get("at", "?"))[:16].replace("T", " ")
            lines.append(
                f"| {item.area} | {_cell(item.claim)} | {tried} | {times:,} | {result} | {_cell(_figures(figures))} "
                f"| `{_cell(test)}` ({row.get('seconds', '?')} s, {at} UTC) |"
            )
    failures = [row for row in rows if row.get("outcome") in ("failed", "error")]
    if failures:
        lines += ["", "### What did not hold", ""]
        for row in failures:
            lines.append(f"- `{row.get('test')}`: {_cell(str(row.get('detail', '')))[-500:]}")
    if unknown:
        lines += ["", f"Rows for unknown items (not in tests.reliability.report.ITEMS): {', '.join(unknown)}"]
    return "\n".join(lines) + "\n"


PREAMBLE_END = "<!-- the table below is generated by `make reliability`; edit the text above it only -->"


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tests.reliability.report RESULTS.jsonl RELIABILITY.md", file=sys.stderr)
        return 2
    results, target = Path(argv[0]), Path(argv[1])
    text = target.read_text(encoding="utf-8") if target.is_file() else ""
    preamble = text.split(PREAMBLE_END)[0].rstrip() if PREAMBLE_END in text else "# Reliability and security"
    rows = latest_rows(read_rows(results))
    target.write_text(render(rows, f"{preamble}\n\n{PREAMBLE_END}", datetime.now(UTC)), encoding="utf-8")
    held = sum(r.get("outcome") == "passed" for r in rows)
    print(f"{target}: {len(rows)} results ({held} held), {len(set(ITEMS) - {r.get('item') for r in rows})} not tried")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
