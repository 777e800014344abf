"""Monitor compute benchmark: the monitor flow's data path against Evidently on every row, same data, same run.

For each size (default 10k, 100k and 1M rows a side x 20 columns, 3 of them drifted, plus the model's
prediction) it fills a SQLite inference log with the current rows (setup, not timed) and times the steps of the
monitor flow (flows/monitor.py) on them:
- read: `tasks.observe.read_live_window` (serving.inference_log.read_window: SQL, JSON decode, DataFrame);
- GX: the Great Expectations suite on the window's inputs (`tasks.validate.run_suite`);
- drift: `tasks.monitor.drift_run` with the prediction column and its default 50,000-row samples;
- report: the Evidently HTML + JSON summary of that run (`write_drift_report`);
- whole flow: the sum of the four (MLflow, Prefect and the reference download are left out: fixed costs);
next to Evidently alone on the same data: ValueDrift per column on all rows (slipway's code, sampling off) and
the stock DataDriftPreset on all rows. An unsampled peer whose time, scaled from the previous size, would pass
--budget seconds is skipped and says so. The read is also split (SQL fetch, JSON decode with orjson as read_window
does and with the standard library, the expansion to one row per prediction and the DataFrame as the rest).
Each timing is the fastest of --repeat runs (one run when it takes over 20 s). Each row also shows the share of
the machine other processes used meanwhile: a high share means that row's seconds are inflated.
Run: `uv run python bench/monitor.py [--rows 10000 100000]` (7-10 minutes with the defaults on 2 cores).
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import pandas as pd

    from tasks.monitor import DriftMethods
    from tasks.validate import SuiteSpec

T = TypeVar("T")
CATEGORIES = ("a", "b", "c", "d")
DRIFTED = ("x0", "x5", "x10")
PREDICTION = "prediction"  # the flow's name for the model's answer (tasks.observe.PREDICTION)
LOG_START = datetime(2025, 1, 1, tzinfo=UTC)
LOG_VERSION = "1"
# Rows per logged request: 1, the read's worst case (a table row, a JSON document and a request id per row).
REQUEST_ROWS = 1
FILL_CHUNK_ROWS = 50_000  # rows per INSERT transaction while filling the log


@dataclass
class Timed:
    seconds: float | None = None
    note: str = ""  # why it was not measured
    estimate_s: float | None = None  # when skipped: the time scaled from the previous size


@dataclass
class ReadSplit:
    """Where read_live_window's time goes, and what decoding the JSON with the standard library would cost."""

    fetch_s: float  # SQL and row objects, the JSON columns fetched as text
    json_s: float  # json.loads per value: what SQLAlchemy's JSON type would do
    orjson_s: float  # orjson.loads per value: what read_window does


@dataclass
class SizeResult:
    rows: int
    fill_s: float  # setup: writing the log, not part of any timing
    log_mb: float
    read_s: float
    gx_s: float | None
    slipway_s: float
    report_s: float
    valuedrift_all: Timed
    preset_all: Timed
    drifted: list[str]
    same_columns_as_all_rows: bool | None
    other_share: float
    report_mb: float
    sampled: bool
    read_split: ReadSplit | None

    @property
    def flow_s(self) -> float:
        """Whole flow compute: read + GX + drift + report."""
        return self.read_s + (self.gx_s or 0.0) + self.slipway_s + self.report_s


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
    """Reference and current frames: `columns - 1` numbers (3 shifted by 0.5 sd in current), one category, and
    the model's prediction (0/1 from x0 + x1, so it drifts with x0)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)

    def one(shifted: bool) -> pd.DataFrame:
        data: dict[str, Any] = {}
        for i in range(columns - 1):
            name = f"x{i}"
            data[name] = rng.normal(0.5 if shifted and name in DRIFTED else 0.0, 1.0, rows)
        data["cat"] = rng.choice(np.array(CATEGORIES, dtype=object), rows, p=[0.4, 0.3, 0.2, 0.1])
        data[PREDICTION] = (data["x0"] + data["x1"] > 0.5).astype("int64")
        return pd.DataFrame(data)

    return one(False), one(True)


def feature_names(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c != PREDICTION]


def generated_suite(reference: pd.DataFrame) -> SuiteSpec:
    """The checks a shipped suite makes (columns, row count, nulls, ranges, categories) for the generated inputs."""
    from tasks.validate import ExpectationSpec, SuiteSpec

    features = feature_names(reference)
    numeric = [c for c in features if c != "cat"]
    specs = [
        ExpectationSpec(type="expect_table_columns_to_match_set", kwargs={"column_set": features, "exact_match": True}),
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


# --- the inference log --------------------------------------------------------------------------------------------


def fill_log(url: str, current: pd.DataFrame) -> None:
    """The log written by the service's own writer (serving.inference_log.InferenceLog): requests of
    REQUEST_ROWS rows of version LOG_VERSION, 1 ms apart from LOG_START, recorded chunk by chunk."""
    from prometheus_client import CollectorRegistry

    from serving.inference_log import InferenceLog, LoggedRequest

    features = feature_names(current)
    log = InferenceLog(url, batch_rows=5_000, flush_interval_s=0.05, registry=CollectorRegistry()).start()
    try:
        for start in range(0, len(current), FILL_CHUNK_ROWS):
            chunk = current.iloc[start : start + FILL_CHUNK_ROWS]
            columns = {name: chunk[name].tolist() for name in features}
            predictions = chunk[PREDICTION].tolist()
            for first in range(0, len(chunk), REQUEST_ROWS):
                last = first + REQUEST_ROWS
                log.record_request(
                    LoggedRequest(
                        request_id=f"req-{(start + first) // REQUEST_ROWS}",
                        model_name="bench",
                        model_version=LOG_VERSION,
                        features={name: values[first:last] for name, values in columns.items()},
                        predictions=predictions[first:last],
                        latency_ms=1.5,
                        ts=LOG_START + timedelta(milliseconds=start + first),
                    )
                )
            while log.queue_rows:  # the queue holds at most 100k rows: let the writer catch up
                time.sleep(0.05)
    finally:
        log.close(timeout_s=600)
    if log.rows_written != len(current):
        raise RuntimeError(f"the inference log wrote {log.rows_written} of {len(current)} rows: {log.last_error}")


def window_bounds(rows: int) -> tuple[datetime, datetime]:
    return LOG_START, LOG_START + timedelta(milliseconds=rows)


def read_flow_window(url: str, rows: int) -> pd.DataFrame:
    """What the monitor flow reads: the live window of the serving version, probe rows left out."""
    from tasks.observe import read_live_window

    since, until = window_bounds(rows)
    return read_live_window(url, since, until, LOG_VERSION)


def _fetch_as_text(url: str, rows: int) -> list[Any]:
    """read_window's own query and fetch (the JSON columns come back as text): no decoding, no frame."""
    from serving.inference_log import _fetch, _window_query

    since, until = window_bounds(rows)
    return _fetch(url, lambda table, present: _window_query(table, present, since, until, LOG_VERSION), "inference_log")


def read_split(url: str, rows: int, repeat: int) -> ReadSplit:
    """Time the parts of the read one by one: the fetch, and the decode of its JSON (orjson as read_window
    does, and the standard library's json.loads, which SQLAlchemy's JSON type would run, for comparison)."""
    import gc

    from serving.inference_log import _gc_paused, _json_loads

    gc.collect()
    with _gc_paused():  # as read_window runs
        fetched, fetch_s = timed(lambda: _fetch_as_text(url, rows), repeat)

        def stdlib() -> None:
            for row in fetched:
                json.loads(row.features)
                json.loads(row.predictions)

        def fast() -> None:
            for row in fetched:
                _json_loads(row.features)
                _json_loads(row.predictions)

        _, json_s = timed(stdlib, repeat)
        _, orjson_s = timed(fast, repeat)
    return ReadSplit(fetch_s=fetch_s, json_s=json_s, orjson_s=orjson_s)


# --- Evidently alone ----------------------------------------------------------------------------------------------


def preset_drift(reference: pd.DataFrame, current: pd.DataFrame, methods: DriftMethods) -> Any:
    """Evidently's stock DataDriftPreset with slipway's methods and thresholds, every row, no sampling."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    categorical = ["cat", PREDICTION]
    definition = DataDefinition(
        numerical_columns=[c for c in reference.columns if c not in categorical], categorical_columns=categorical
    )
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
        lambda: drift_result(
            tiny_reference, tiny_current, feature_names(tiny_reference), methods, prediction_column=PREDICTION
        )
    )
    say(f"first Evidently run (lazy imports, plotly) {result.evidently_first_run_s:.1f} s")
    suite = None
    if not args.no_gx:
        from tasks.validate import run_suite

        suite = generated_suite(tiny_reference)
        _, result.gx_first_run_s = timed(lambda: run_suite(suite, tiny_reference[feature_names(tiny_reference)]))
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
    """Fill the log, time the flow's steps on it, the unsampled peers (within the budget) and the read split."""
    from serving.inference_log import sqlite_url
    from tasks.monitor import drift_result, drift_run, write_drift_report

    reference, current = frames(rows, args.columns, seed=rows)
    features = feature_names(reference)
    database = workdir / f"inference-log-{rows}.db"
    url = sqlite_url(database)
    say(f"{rows:,} rows: filling the inference log (setup, not timed)")
    _, fill_s = timed(lambda: fill_log(url, current))
    log_mb = sum(path.stat().st_size for path in workdir.glob(f"{database.name}*")) / 1e6

    with OtherWork() as other:
        say(f"{rows:,} rows: read_live_window")
        window, read_s = timed(lambda: read_flow_window(url, rows), args.repeat)
        if len(window) != rows:
            raise RuntimeError(f"read {len(window)} rows of the {rows} logged")

        gx_s = None
        if suite is not None:
            from tasks.validate import run_suite

            say(f"{rows:,} rows: Great Expectations suite on the window's inputs")
            check, gx_s = timed(lambda: run_suite(suite, window[features]), args.repeat)
            if not check.passed:
                raise RuntimeError(f"the generated data should pass its suite: {check.detail}")

        def flow_drift() -> Any:
            # As flows/monitor.py `_drift` builds the current side: the inputs, then the logged predictions.
            live = window[features].copy()
            live[PREDICTION] = window["prediction"].tolist()
            return drift_run(
                reference,
                live,
                features,
                methods,
                sample_rows=args.sample_rows,
                prediction_column=PREDICTION,
                prediction_kind="categorical",
            )

        say(f"{rows:,} rows: slipway drift ({args.sample_rows:,}-row samples, prediction included)")
        sampled, slipway_s = timed(flow_drift, args.repeat)
        files, report_s = timed(lambda: write_drift_report(sampled, workdir, stem=f"drift-{rows}"), args.repeat)

        full = Timed()
        full_drifted: tuple[str, ...] | None = None
        guess = estimate(last_full, rows)
        if guess is not None and guess > args.budget:
            full.note = f"skipped: ~{guess:.0f} s estimated > {args.budget:.0f} s budget"
            full.estimate_s = guess
        else:
            say(f"{rows:,} rows: Evidently ValueDrift on all rows")
            full_result, full.seconds = timed(
                lambda: drift_result(
                    reference, current, features, methods, sample_rows=None, prediction_column=PREDICTION
                ),
                args.repeat,
            )
            full_drifted = full_result.drifted_columns

        preset = Timed()
        guess = estimate(last_preset, rows)
        if args.no_preset:
            preset.note = "skipped (--no-preset)"
        elif guess is not None and guess > args.budget:
            preset.note = f"skipped: ~{guess:.0f} s estimated > {args.budget:.0f} s budget"
            preset.estimate_s = guess
        else:
            say(f"{rows:,} rows: Evidently DataDriftPreset on all rows")
            _, preset.seconds = timed(lambda: preset_drift(reference, current, methods), args.repeat)

        split = None
        if not args.no_read_split:
            say(f"{rows:,} rows: the read, part by part")
            split = read_split(url, rows, args.repeat)
    for path in workdir.glob(f"{database.name}*"):
        path.unlink()  # the 1M-row log is about 0.6 GB
    drifted = sampled.result.drifted_columns
    return SizeResult(
        rows=rows,
        fill_s=fill_s,
        log_mb=log_mb,
        read_s=read_s,
        gx_s=gx_s,
        slipway_s=slipway_s,
        report_s=report_s,
        valuedrift_all=full,
        preset_all=preset,
        drifted=list(drifted),
        same_columns_as_all_rows=None if full_drifted is None else full_drifted == drifted,
        other_share=other.share,
        report_mb=files.html.stat().st_size / 1e6,
        sampled=sampled.result.sampled,
        read_split=split,
    )


# --- output -------------------------------------------------------------------------------------------------------

TARGET_S = 60.0  # issue 4: the whole flow on 1M logged rows


def print_table(result: BenchResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 170)
    best = f", fastest of {result.repeat} runs" if result.repeat > 1 else ""
    table = Table(
        title=f"Monitor compute: the monitor flow's steps on logged rows x {result.columns} columns + prediction, "
        f"against Evidently alone on the same rows ({result.cpus} CPUs{best})"
    )
    for header in (
        "rows a side",
        "read log",
        "GX",
        "drift (sampled)",
        "report",
        "whole flow",
        "ValueDrift all rows",
        "ratio",
        "Preset all rows",
        "ratio",
        "Preset / flow",
        "same drifted",
        "other work",
    ):
        table.add_column(header, justify="right")
    for size in result.sizes:
        table.add_row(
            f"{size.rows:,}",
            f"{size.read_s:.1f} s",
            "-" if size.gx_s is None else f"{size.gx_s:.1f} s",
            f"{size.slipway_s:.1f} s" + ("" if size.sampled else " (all rows)"),
            f"{size.report_s:.1f} s",
            f"{size.flow_s:.1f} s" + (" (no GX)" if size.gx_s is None else ""),
            _seconds(size.valuedrift_all),
            _ratio(size.valuedrift_all, size.slipway_s),
            _seconds(size.preset_all),
            _ratio(size.preset_all, size.slipway_s),
            _ratio(size.preset_all, size.flow_s),
            {None: "-", True: "yes", False: "NO"}[size.same_columns_as_all_rows],
            f"{size.other_share:.0%}" + (" (inflated)" if size.other_share > 0.25 else ""),
        )
    console.print(table)
    console.print(
        "read log: tasks.observe.read_live_window of every logged row (SQLite); GX: the suite on the window's "
        "inputs; drift: tasks.monitor.drift_run (Evidently 0.7 ValueDrift per column on seeded samples, the "
        "prediction included); report: Evidently HTML + JSON of that run; whole flow: the sum. ValueDrift all rows: "
        "the same drift without sampling; Preset: Evidently's DataDriftPreset, same methods, every row; ratio: "
        "peer / slipway drift; Preset / flow: Evidently's preset alone / slipway's whole flow; est.: a skipped peer's "
        "time scaled from the previous size (rows ratio ** 1.2), not measured."
    )
    for size in result.sizes:
        for label, timing in (("ValueDrift", size.valuedrift_all), ("DataDriftPreset", size.preset_all)):
            if timing.note:
                console.print(f"  {size.rows:,} rows, Evidently {label}: {timing.note}")
    print_read_split(console, result)
    once = result.evidently_import_s + (result.evidently_first_run_s or 0.0) + (result.gx_first_run_s or 0.0)
    gx_cold = f", first GX run (import and context) {result.gx_first_run_s:.1f} s" if result.gx_first_run_s else ""
    console.print(
        f"One-off costs of a monitor process ({once:.1f} s): Evidently import {result.evidently_import_s:.1f} s, "
        f"first Evidently run {result.evidently_first_run_s or 0.0:.1f} s{gx_cold}."
    )
    largest = result.sizes[-1] if result.sizes else None
    if largest is not None:
        verdict = "met" if largest.flow_s <= TARGET_S else "NOT met"
        console.print(
            f"Whole flow compute at {largest.rows:,} rows: {largest.flow_s:.1f} s (read {largest.read_s:.1f} + GX "
            f"{largest.gx_s or 0.0:.1f} + drift {largest.slipway_s:.1f} + report {largest.report_s:.1f}), "
            f"{largest.flow_s + once:.1f} s with the one-off imports; target <= {TARGET_S:.0f} s: {verdict}"
            + (f" (other work took {largest.other_share:.0%} of the machine meanwhile)" if largest.other_share else "")
            + f". Evidently's DataDriftPreset alone on the same rows: {_seconds(largest.preset_all)}."
        )
    console.print(
        f"Sampling: {result.sample_rows:,} uniform rows a side (seeded); drifted columns equal the all-rows "
        "computation wherever it ran (tests/unit/test_monitor.py checks 5 scenarios at 100k rows)."
    )


def print_read_split(console: Any, result: BenchResult) -> None:
    from rich.table import Table

    sizes = [size for size in result.sizes if size.read_split is not None]
    if not sizes:
        return
    table = Table(title="Reading the inference log: where read_live_window's time goes")
    for header in (
        "rows",
        "read_live_window",
        "SQL fetch (JSON as text)",
        "json.loads per value",
        "orjson per value",
        "expand + DataFrame (rest)",
        "log fill (setup)",
    ):
        table.add_column(header, justify="right")
    for size in sizes:
        split = size.read_split
        assert split is not None
        table.add_row(
            f"{size.rows:,}",
            f"{size.read_s:.1f} s",
            f"{split.fetch_s:.1f} s",
            f"{split.json_s:.1f} s ({split.json_s / size.read_s:.0%})",
            f"{split.orjson_s:.1f} s",
            f"{max(size.read_s - split.fetch_s - split.orjson_s, 0.0):.1f} s",
            f"{size.fill_s:.0f} s, {size.log_mb:.0f} MB",
        )
    console.print(table)
    console.print(
        f"The log holds requests of {REQUEST_ROWS} row(s), one table row each. read_window fetches the JSON columns "
        "as text (CAST) and decodes them with orjson; json.loads per value is what SQLAlchemy's JSON type would "
        "run instead (its share of the read in brackets); the rest is read_live_window minus fetch and orjson."
    )


def _seconds(timing: Timed) -> str:
    if timing.seconds is not None:
        return f"{timing.seconds:.1f} s"
    return "skipped" if timing.estimate_s is None else f"skipped (~{timing.estimate_s:.0f} s est.)"


def _ratio(peer: Timed, ours: float) -> str:
    if ours <= 0:
        return "-"
    if peer.seconds is not None:
        return f"{peer.seconds / ours:.1f}x"
    return "-" if peer.estimate_s is None else f"~{peer.estimate_s / ours:.0f}x (est.)"


def main(argv: list[str] | None = None) -> int:
    """Time the monitor flow's steps on a filled inference log against Evidently on all rows; 0 on success."""
    parser = argparse.ArgumentParser(prog="bench/monitor.py", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="Rows a side.")
    parser.add_argument("--columns", type=int, default=20, help="Input columns (one categorical), plus a prediction.")
    parser.add_argument("--sample-rows", type=int, default=50_000, help="slipway's sample size a side.")
    parser.add_argument(
        "--budget", type=float, default=150.0, help="Skip an unsampled peer estimated to take longer (s)."
    )
    parser.add_argument(
        "--repeat", type=int, default=2, help=f"Runs per timing, fastest kept (one if over {REPEAT_UNDER_S:g} s)."
    )
    parser.add_argument("--no-preset", action="store_true", help="Do not time Evidently's DataDriftPreset.")
    parser.add_argument("--no-gx", action="store_true", help="Do not time the Great Expectations suite.")
    parser.add_argument("--no-read-split", action="store_true", help="Do not split the read into its parts.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the raw results here.")
    args = parser.parse_args(argv)
    if args.columns < 3 or any(r < 100 for r in args.rows) or args.repeat < 1:
        parser.error("need at least 3 columns, 100 rows and 1 repeat")
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
