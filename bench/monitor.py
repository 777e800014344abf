"""Monitor compute benchmark: slipway's sampled drift vs Evidently on every row, on the same data in the same run.

For each size (default 10k, 100k and 1M rows a side x 20 columns, 3 of them drifted) it times:
- slipway: `tasks.monitor.drift_run` with its default 50,000-row samples (Evidently 0.7 ValueDrift per column);
- Evidently ValueDrift, all rows: the same code path with sampling off;
- Evidently DataDriftPreset, all rows: the stock 0.7 preset with the same methods and thresholds;
- the HTML + JSON report of slipway's run, and the Great Expectations suite on all current rows.
An unsampled peer whose time, scaled from the previous size, would pass --budget seconds is skipped and says so.
Each timing is the fastest of --repeat runs (one run when it takes over 20 s). Each row also shows the share of
the machine other processes used meanwhile: a high share means that row's seconds are inflated.
Run: `uv run python bench/monitor.py [--rows 10000 100000]` (about 3-4 minutes with the defaults on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import pandas as pd

    from tasks.monitor import DriftMethods
    from tasks.validate import SuiteSpec

T = TypeVar("T")
CATEGORIES = ("a", "b", "c", "d")
DRIFTED = ("x0", "x5", "x10")


@dataclass
class Timed:
    seconds: float | None = None
    note: str = ""  # why it was not measured


@dataclass
class SizeResult:
    rows: int
    slipway_s: float
    report_s: float
    gx_s: float | None
    valuedrift_all: Timed
    preset_all: Timed
    drifted: list[str]
    same_columns_as_all_rows: bool | None
    other_share: float
    report_mb: float
    sampled: bool


@dataclass
class BenchResult:
    columns: int
    sample_rows: int
    cpus: int
    repeat: int
    evidently_import_s: float
    evidently_first_run_s: float | None
    gx_first_run_s: float | None
    sizes: list[SizeResult] = field(default_factory=list)


def frames(rows: int, columns: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reference and current frames: `columns - 1` numbers (3 shifted by 0.5 sd in current) and one category."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)

    def one(shifted: bool) -> pd.DataFrame:
        data: dict[str, Any] = {}
        for i in range(columns - 1):
            name = f"x{i}"
            data[name] = rng.normal(0.5 if shifted and name in DRIFTED else 0.0, 1.0, rows)
        data["cat"] = rng.choice(np.array(CATEGORIES, dtype=object), rows, p=[0.4, 0.3, 0.2, 0.1])
        return pd.DataFrame(data)

    return one(False), one(True)


def generated_suite(reference: pd.DataFrame) -> SuiteSpec:
    """The checks a shipped suite makes (columns, row count, nulls, ranges, categories) for the generated columns."""
    from tasks.validate import ExpectationSpec, SuiteSpec

    numeric = [c for c in reference.columns if c != "cat"]
    specs = [
        ExpectationSpec(
            type="expect_table_columns_to_match_set",
            kwargs={"column_set": list(reference.columns), "exact_match": True},
        ),
        ExpectationSpec(type="expect_table_row_count_to_be_between", kwargs={"min_value": 50}),
        ExpectationSpec(type="expect_column_values_to_be_in_set", kwargs={"column": "cat", "value_set": CATEGORIES}),
    ]
    for column in [*numeric, "cat"]:
        specs.append(ExpectationSpec(type="expect_column_values_to_not_be_null", kwargs={"column": column}))
    for column in numeric:
        specs.append(
            ExpectationSpec(
                type="expect_column_values_to_be_between", kwargs={"column": column, "min_value": -9, "max_value": 9}
            )
        )
    return SuiteSpec(name="bench_generated", expectations=tuple(specs))


REPEAT_UNDER_S = 20.0  # a longer run is timed once: bursts of other work average out, and repeats cost minutes


def timed(work: Callable[[], T], repeat: int = 1) -> tuple[T, float]:
    """The work's value and its fastest time over up to `repeat` runs (the run least disturbed by other work)."""
    best = math.inf
    for _ in range(repeat):
        started = time.perf_counter()
        value = work()
        best = min(best, time.perf_counter() - started)
        if best > REPEAT_UNDER_S:
            break
    return value, best


class OtherWork:
    """Share of the machine (0..1) busy with other processes while the block ran."""

    def __enter__(self) -> OtherWork:
        import psutil

        self._psutil = psutil
        self._busy, self._mine, self._started = self._machine(), self._own(), time.perf_counter()
        self.share = 0.0
        return self

    def _machine(self) -> float:
        times = self._psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    def _own(self) -> float:
        cpu = self._psutil.Process().cpu_times()
        return cpu.user + cpu.system + cpu.children_user + cpu.children_system

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._started
        other = (self._machine() - self._busy) - (self._own() - self._mine)
        self.share = max(0.0, other / (wall * (os.cpu_count() or 1)))


def preset_drift(reference: pd.DataFrame, current: pd.DataFrame, methods: DriftMethods) -> Any:
    """Evidently's stock DataDriftPreset with slipway's methods and thresholds, every row, no sampling."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    numeric = [c for c in reference.columns if c != "cat"]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=["cat"])
    preset = DataDriftPreset(
        num_method=methods.num_method,
        cat_method=methods.cat_method,
        num_threshold=methods.threshold_for("numerical"),
        cat_threshold=methods.threshold_for("categorical"),
        drift_share=methods.drift_share,
    )
    return Report([preset], include_tests=True).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )


def estimate(previous: tuple[int, float] | None, rows: int) -> float | None:
    """Seconds at `rows` from the last measured size; Evidently grows a little faster than linearly (measured:
    DataDriftPreset 5.7 s at 100k rows, 88 s at 1M), so the scale is (rows ratio) ** 1.2."""
    if previous is None:
        return None
    previous_rows, seconds = previous
    return float(seconds * (rows / previous_rows) ** 1.2)


def run(args: argparse.Namespace, say: Callable[[str], None]) -> BenchResult:
    from tasks.monitor import DriftMethods, drift_result

    started = time.perf_counter()
    # Timed apart: a monitor process pays these imports once, whatever the data size.
    import evidently.metrics
    import evidently.presets  # noqa: F401

    result = BenchResult(
        columns=args.columns,
        sample_rows=args.sample_rows,
        cpus=os.cpu_count() or 1,
        repeat=args.repeat,
        evidently_import_s=time.perf_counter() - started,
        evidently_first_run_s=None,
        gx_first_run_s=None,
    )
    say(f"imported Evidently in {result.evidently_import_s:.1f} s")
    methods = DriftMethods()
    tiny_reference, tiny_current = frames(200, args.columns, 0)
    _, result.evidently_first_run_s = timed(
        lambda: drift_result(tiny_reference, tiny_current, list(tiny_reference.columns), methods)
    )
    say(f"first Evidently run (lazy imports, plotly) {result.evidently_first_run_s:.1f} s")
    suite = None
    if not args.no_gx:
        from tasks.validate import run_suite

        suite = generated_suite(tiny_reference)
        _, result.gx_first_run_s = timed(lambda: run_suite(suite, tiny_reference))
        say(f"first Great Expectations run (import and context) {result.gx_first_run_s:.1f} s")

    last_full: tuple[int, float] | None = None
    last_preset: tuple[int, float] | None = None
    with tempfile.TemporaryDirectory(prefix="slipway-bench-monitor-") as workdir:
        for rows in args.rows:
            size = measure_size(rows, args, methods, suite, Path(workdir), last_full, last_preset, say)
            if size.valuedrift_all.seconds is not None:
                last_full = (rows, size.valuedrift_all.seconds)
            if size.preset_all.seconds is not None:
                last_preset = (rows, size.preset_all.seconds)
            result.sizes.append(size)
    return result


def measure_size(
    rows: int,
    args: argparse.Namespace,
    methods: DriftMethods,
    suite: SuiteSpec | None,
    workdir: Path,
    last_full: tuple[int, float] | None,
    last_preset: tuple[int, float] | None,
    say: Callable[[str], None],
) -> SizeResult:
    """Time slipway's sampled drift, its report, the unsampled peers (within the budget) and GX at one size."""
    from tasks.monitor import drift_result, drift_run, write_drift_report

    reference, current = frames(rows, args.columns, seed=rows)
    columns = list(reference.columns)
    with OtherWork() as other:
        say(f"{rows:,} rows: slipway drift ({args.sample_rows:,}-row samples)")
        sampled, slipway_s = timed(
            lambda: drift_run(reference, current, columns, methods, sample_rows=args.sample_rows), args.repeat
        )
        files, report_s = timed(lambda: write_drift_report(sampled, workdir, stem=f"drift-{rows}"), args.repeat)

        full = Timed()
        full_drifted: tuple[str, ...] | None = None
        guess = estimate(last_full, rows)
        if guess is not None and guess > args.budget:
            full.note = f"skipped: ~{guess:.0f} s estimated > {args.budget:.0f} s budget"
        else:
            say(f"{rows:,} rows: Evidently ValueDrift on all rows")
            full_result, full.seconds = timed(
                lambda: drift_result(reference, current, columns, methods, sample_rows=None), args.repeat
            )
            full_drifted = full_result.drifted_columns

        preset = Timed()
        guess = estimate(last_preset, rows)
        if args.no_preset:
            preset.note = "skipped (--no-preset)"
        elif guess is not None and guess > args.budget:
            preset.note = f"skipped: ~{guess:.0f} s estimated > {args.budget:.0f} s budget"
        else:
            say(f"{rows:,} rows: Evidently DataDriftPreset on all rows")
            _, preset.seconds = timed(lambda: preset_drift(reference, current, methods), args.repeat)

        gx_s = None
        if suite is not None:
            from tasks.validate import run_suite

            say(f"{rows:,} rows: Great Expectations suite on all current rows")
            check, gx_s = timed(lambda: run_suite(suite, current), args.repeat)
            if not check.passed:
                raise RuntimeError(f"the generated data should pass its suite: {check.detail}")
    drifted = sampled.result.drifted_columns
    return SizeResult(
        rows=rows,
        slipway_s=slipway_s,
        report_s=report_s,
        gx_s=gx_s,
        valuedrift_all=full,
        preset_all=preset,
        drifted=list(drifted),
        same_columns_as_all_rows=None if full_drifted is None else full_drifted == drifted,
        other_share=other.share,
        report_mb=files.html.stat().st_size / 1e6,
        sampled=sampled.result.sampled,
    )


def print_table(result: BenchResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 170)
    best = f", fastest of {result.repeat} runs" if result.repeat > 1 else ""
    table = Table(
        title=f"Monitor compute: drift of {result.columns} columns, reference and current of the same size "
        f"({result.cpus} CPUs{best})"
    )
    for header in (
        "rows a side",
        "slipway (sampled)",
        "ValueDrift all rows",
        "ratio",
        "Preset all rows",
        "ratio",
        "same drifted",
        "report",
        "GX all rows",
        "other work",
    ):
        table.add_column(header, justify="right")
    for size in result.sizes:
        table.add_row(
            f"{size.rows:,}",
            f"{size.slipway_s:.1f} s" + ("" if size.sampled else " (all rows)"),
            _seconds(size.valuedrift_all),
            _ratio(size.valuedrift_all, size.slipway_s),
            _seconds(size.preset_all),
            _ratio(size.preset_all, size.slipway_s),
            {None: "-", True: "yes", False: "NO"}[size.same_columns_as_all_rows],
            f"{size.report_s:.1f} s, {size.report_mb:.1f} MB",
            "-" if size.gx_s is None else f"{size.gx_s:.1f} s",
            f"{size.other_share:.0%}" + (" (inflated)" if size.other_share > 0.25 else ""),
        )
    console.print(table)
    console.print(
        "slipway: tasks.monitor.drift_run, Evidently 0.7 ValueDrift per column on seeded samples; ValueDrift all rows:"
        " the same without sampling; Preset: Evidently's DataDriftPreset, same methods; ratio: peer / slipway;"
        " report: Evidently HTML + JSON summary of slipway's run; GX: the Great Expectations suite on current rows."
    )
    for size in result.sizes:
        for label, timing in (("ValueDrift", size.valuedrift_all), ("DataDriftPreset", size.preset_all)):
            if timing.note:
                console.print(f"  {size.rows:,} rows, Evidently {label}: {timing.note}")
    once = result.evidently_import_s + (result.evidently_first_run_s or 0.0) + (result.gx_first_run_s or 0.0)
    gx_cold = f", first GX run (import and context) {result.gx_first_run_s:.1f} s" if result.gx_first_run_s else ""
    console.print(
        f"One-off costs of a monitor process ({once:.1f} s): Evidently import {result.evidently_import_s:.1f} s, "
        f"first Evidently run {result.evidently_first_run_s or 0.0:.1f} s{gx_cold}."
    )
    largest = result.sizes[-1] if result.sizes else None
    if largest is not None:
        parts = [largest.slipway_s, largest.report_s, largest.gx_s or 0.0]
        console.print(
            f"Monitor compute at {largest.rows:,} rows (drift + report + GX, reading the log not included): "
            f"{sum(parts):.1f} s, {sum(parts) + once:.1f} s with the one-off imports."
        )
    console.print(
        f"Sampling: {result.sample_rows:,} uniform rows a side (seeded); drifted columns equal the all-rows "
        "computation wherever it ran (tests/unit/test_monitor.py checks 5 scenarios at 100k rows)."
    )


def _seconds(timing: Timed) -> str:
    return "skipped" if timing.seconds is None else f"{timing.seconds:.1f} s"


def _ratio(peer: Timed, ours: float) -> str:
    if peer.seconds is None or ours <= 0:
        return "-"
    return f"{peer.seconds / ours:.1f}x"


def main(argv: list[str] | None = None) -> int:
    """Time the monitor's drift (sampled) against Evidently on all rows and print the table; 0 on success."""
    parser = argparse.ArgumentParser(prog="bench/monitor.py", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="Rows a side.")
    parser.add_argument("--columns", type=int, default=20, help="Columns (one categorical).")
    parser.add_argument("--sample-rows", type=int, default=50_000, help="slipway's sample size a side.")
    parser.add_argument(
        "--budget", type=float, default=150.0, help="Skip an unsampled peer estimated to take longer (s)."
    )
    parser.add_argument(
        "--repeat", type=int, default=2, help=f"Runs per timing, fastest kept (one if over {REPEAT_UNDER_S:g} s)."
    )
    parser.add_argument("--no-preset", action="store_true", help="Do not time Evidently's DataDriftPreset.")
    parser.add_argument("--no-gx", action="store_true", help="Do not time the Great Expectations suite.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the raw results here.")
    args = parser.parse_args(argv)
    if args.columns < 2 or any(r < 100 for r in args.rows) or args.repeat < 1:
        parser.error("need at least 2 columns, 100 rows and 1 repeat")
    args.rows = sorted(args.rows)

    started = time.perf_counter()
    result = run(args, lambda message: print(f"[{time.perf_counter() - started:6.1f} s] {message}", flush=True))
    print_table(result)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(result), indent=2, default=_json_default))
        print(f"raw results: {args.json}")
    print(f"benchmark took {time.perf_counter() - started:.0f} s")
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


if __name__ == "__main__":
    # Run as a script (`python bench/monitor.py`), the repository root is not on sys.path yet.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
