"""The closed loop, end to end on one machine: `make demo` runs it after `slipway train`.

Serves the champion, sends traffic from the training distribution (monitor: no drift), then shifted traffic
(only malignant tumours: every value valid, the mix changed), and lets the monitor flow detect the drift,
retrain, gate and serve the new champion; prints the timeline and where each report is. Stops serving at the
end unless --keep-serving. Run it yourself with `uv run python -m examples.closed_loop --help`.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

OVERLAY = Path(__file__).with_name("closed_loop.yaml")
console = Console(soft_wrap=True)


def feature_records(frame: pd.DataFrame, target: str = "malignant") -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(frame.drop(columns=[target]).to_json(orient="records"))
    return records


def send(url: str, frame: pd.DataFrame, batch: int = 20, target: str = "malignant") -> str:
    """POST the frame's feature rows to /predict in batches; any answer but 200 is an error. Returns the last
    answer's request id."""
    records = feature_records(frame, target)
    request_id = ""
    with httpx.Client(base_url=url, timeout=30.0) as client:
        for start in range(0, len(records), batch):
            answer = client.post("/predict", json={"records": records[start : start + batch]})
            if answer.status_code != 200:
                raise RuntimeError(f"/predict answered {answer.status_code}: {answer.text[:300]}")
            request_id = answer.json()["request_id"]
    return request_id


def wait_logged(log_url: str, since: datetime, rows: int, timeout_s: float = 30.0) -> int:
    """Wait until the inference log holds `rows` rows since `since` (the service writes it every ~0.5 s)."""
    from tasks.observe import read_live_window

    deadline = time.monotonic() + timeout_s
    while True:
        logged = len(read_live_window(log_url, since, datetime.now(UTC), None))
        if logged >= rows or time.monotonic() > deadline:
            return logged
        time.sleep(0.25)


def reference_traffic(data: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """Rows drawn from the data the model was trained on: what an unchanged world sends."""
    return data.sample(n=rows, replace=True, random_state=seed)


def shifted_traffic(data: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """Only malignant tumours: each value is one the model has seen, the population is not."""
    return data[data["malignant"] == 1].sample(n=rows, replace=True, random_state=seed)


def main(
    rows: Annotated[int, typer.Option(help="Rows of traffic per phase.")] = 300,
    keep_serving: Annotated[bool, typer.Option(help="Leave the server running at the end.")] = False,
    config: Annotated[Path, typer.Option(help="Overlay with the demo's monitor settings.")] = OVERLAY,
) -> None:
    """Serve the champion, then run the monitor on unchanged and on shifted traffic, printing the timeline."""
    from configs import load_config, process_environment

    loaded = load_config(overlay=config)
    for key, value in process_environment(loaded.settings).items():
        os.environ.setdefault(key, value)
    from examples.breast_cancer import load_data
    from flows.deploy import deploy
    from flows.monitor import monitor_flow
    from tasks.deploy import stop_serving

    started = time.monotonic()
    timeline: list[tuple[str, str, str]] = []

    def mark(step: str, what: str, where: str = "") -> None:
        timeline.append((f"{time.monotonic() - started:6.1f} s", step, what))
        console.print(f"[bold]{step}[/] {what}" + (f"\n  report: {where}" if where else ""), highlight=False)

    overlay = str(config)
    data = load_data()
    result = deploy(config_file=overlay)
    url = result.state.front.probe_url
    mark("serve", f"v{result.state.backend.model_version} at {result.url}")
    try:
        phase = datetime.now(UTC)
        send(url, reference_traffic(data, rows, seed=11))
        wait_logged(loaded.settings.inference_log_url, phase, rows)
        verdict = monitor_flow(config_file=overlay, since=phase)
        mark(
            "monitor",
            f"{rows} rows like the training data: {verdict.status} -> {verdict.action}",
            str(verdict.report_path),
        )

        phase = datetime.now(UTC)
        last_request = send(url, shifted_traffic(data, rows, seed=12))
        wait_logged(loaded.settings.inference_log_url, phase, rows)
        mark("traffic", f"{rows} rows of shifted traffic (only malignant tumours), the last request {last_request}")
        verdict = monitor_flow(config_file=overlay, since=phase)
        drift = verdict.drift.summary() if verdict.drift is not None else "not computed"
        mark("monitor", f"{verdict.status} -> {verdict.action}: {drift}", str(verdict.report_path))
        from tasks.deploy import serving_status

        status = serving_status(loaded.settings.home)
        if status.state is not None:
            mark(
                "serving",
                f"v{status.state.backend.model_version} ({status.state.backend.bento_tag}), {status.condition}",
            )
    finally:
        if not keep_serving:
            stop_serving.fn(loaded.settings.home)
            mark("stop", "serving stopped (--keep-serving leaves it up)")

    table = Table(title="closed loop")
    for column in ("at", "step", "what"):
        table.add_column(column)
    for row in timeline:
        table.add_row(*row)
    console.print(table)
    console.print(
        "`slipway report` lists the verdicts; `slipway history` shows the alias moves; "
        f"`slipway log show {last_request}` shows what serving was sent and answered for the last request.",
        highlight=False,
    )


if __name__ == "__main__":
    typer.run(main)
