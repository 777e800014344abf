"""The `slipway` CLI: help on every command, config errors before any work, readable output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "command",
    [[], ["train"], ["release"], ["promote"], ["rollback"], ["history"], ["config"], ["log", "prune"], ["log", "show"]],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_bad_config_fails_before_any_work_naming_file_and_field(home: Path, tmp_path: Path) -> None:
    # Given an overlay with a wrong type, when `slipway train` runs, then it exits 2 with the file and the
    # field path, and nothing was created: no MLflow database, no run.
    bad = tmp_path / "bad.yaml"
    bad.write_text("gates:\n  parity:\n    max_abs_diff_fp32: lots\n")
    result = runner.invoke(app, ["train", "--config", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}: gates.parity.max_abs_diff_fp32: input should be a valid number" in result.output
    assert not (home / "mlflow.db").exists()


def test_config_show_and_schema(home: Path) -> None:
    shown = runner.invoke(app, ["config", "show"])
    assert shown.exit_code == 0 and '"breast-cancer-classifier"' in shown.output
    schema = runner.invoke(app, ["config", "schema"])
    assert schema.exit_code == 0 and '"max_abs_diff_fp32"' in schema.output


def test_release_needs_a_model(home: Path) -> None:
    result = runner.invoke(app, ["release"])
    assert result.exit_code == 2 and "--run-id or --model-uri" in result.output


def test_remote_serving_status_reads_the_url_and_stop_refuses(home: Path, tmp_path: Path) -> None:
    # Given serving run elsewhere and not answering, status says unreachable (exit 1) naming the URL, and stop
    # refuses with exit 2 instead of touching anything local.
    overlay = tmp_path / "remote.yaml"
    overlay.write_text(
        "serving:\n  target: remote\n  remote:\n    url: http://127.0.0.1:9\n    deploy_command: [kubectl, version]\n"
    )
    status = runner.invoke(app, ["status", "--json", "--config", str(overlay)])
    assert status.exit_code == 1, status.output
    assert '"condition": "unreachable"' in status.output and '"target": "remote"' in status.output
    assert "127.0.0.1:9" in status.output
    stop = runner.invoke(app, ["stop", "--config", str(overlay)])
    assert stop.exit_code == 2
    assert "serving.target is remote" in stop.output


def test_log_prune_counts_then_deletes_what_is_older_than_asked(home: Path) -> None:
    # Given two requests logged 40 days ago and one today, `slipway log prune --dry-run` counts the two and deletes
    # nothing; `slipway log prune` (the 30-day default retention) deletes them; a null retention needs the option.
    from datetime import UTC, datetime, timedelta

    from prometheus_client import CollectorRegistry

    from serving.inference_log import InferenceLog, LoggedRow, read_window, sqlite_url

    url = sqlite_url(home / "inference_log.db")
    log = InferenceLog(url, registry=CollectorRegistry()).start()
    now = datetime.now(UTC)
    for request_id, age in (("a", 40), ("b", 40), ("c", 0)):
        log.record([LoggedRow(request_id, "m", "1", 0, {"x": 1.0}, 0, 1.0, ts=now - timedelta(days=age))])
    log.close(timeout_s=30)

    counted = runner.invoke(app, ["log", "prune", "--dry-run"])
    assert counted.exit_code == 0, counted.output
    assert "would delete 2 log rows (2 predictions) logged before" in counted.output
    assert len(read_window(url, now - timedelta(days=365))) == 3

    pruned = runner.invoke(app, ["log", "prune"])
    assert pruned.exit_code == 0, pruned.output
    assert "deleted 2 log rows (2 predictions)" in pruned.output
    assert list(read_window(url, now - timedelta(days=365))["request_id"]) == ["c"]

    forever = home.parent / "forever.yaml"
    forever.write_text("serving:\n  inference_log_retention_days: null\n")
    refused = runner.invoke(app, ["log", "prune", "--config", str(forever)])
    assert refused.exit_code == 2 and "--older-than-days" in refused.output


def test_log_show_finds_a_request_by_its_id_alone_or_in_a_joined_model_call(home: Path) -> None:
    # Given a request the service named logged alone, two more answered by one model call, and a caller's id
    # logged a day ago, `slipway log show` prints each request's own rows, finds the caller's id with --since,
    # and names the range it searched when an id is not there.
    from datetime import UTC, datetime, timedelta

    import numpy as np
    from prometheus_client import CollectorRegistry

    from serving.inference_log import InferenceLog, LoggedRow, sqlite_url
    from serving.predictor import new_request_id

    alone, first, second = new_request_id(), new_request_id(), new_request_id()
    now = datetime.now(UTC)
    log = InferenceLog(sqlite_url(home / "inference_log.db"), registry=CollectorRegistry()).start()
    log.record([LoggedRow(alone, "m", "2", 0, {"x": 0.5, "kind": "a", "[b]w[0]": 7}, 1, 2.0, [0.25, 0.75])])
    features = {"x": [1.0, 2.0, 3.0], "kind": ["b", "c", "d"]}
    log.record_batch([(first, 1, 1.0), (second, 2, 1.25)], "m", "2", features, [0, 1, 1], np.full((3, 2), 0.5))
    log.record([LoggedRow("caller-7", "m", "1", 0, {"x": 9.0}, 0, 3.0, None, now - timedelta(days=1))])
    log.close(timeout_s=30)

    shown = runner.invoke(app, ["log", "show", second])
    assert shown.exit_code == 0, shown.output
    assert f"request {second}: 2 rows, model version 2" in shown.output and "latency 1.25 ms" in shown.output
    assert [line.split() for line in shown.output.splitlines() if line.startswith(("x ", "kind", "prediction"))] == [
        ["x", "2", "3"],
        ["kind", "c", "d"],
        ["prediction", "1", "1"],
    ]
    [call] = json.loads(runner.invoke(app, ["log", "show", alone, "--json"]).output)
    assert call["rows"] == [{"x": 0.5, "kind": "a", "[b]w[0]": 7, "prediction": 1, "probabilities": [0.25, 0.75]}]
    # a feature name is printed as it is, not read as markup
    assert "[b]w[0]  " in runner.invoke(app, ["log", "show", alone]).output
    assert call["latency_ms"] == 2.0 and call["model_version"] == "2"
    one_row = runner.invoke(app, ["log", "show", second, "--rows", "1"])
    assert "... 1 more row: --rows 2 (as many as the terminal is wide for), or --json" in one_row.output

    # A caller's id is looked for in the last day unless asked otherwise: caller-7 was logged just before it
    recent = runner.invoke(app, ["log", "show", "caller-7"])
    assert recent.exit_code == 1 and "(--since and --until search another range)" in recent.output
    since = (now - timedelta(days=2)).strftime("%Y-%m-%d")
    found = runner.invoke(app, ["log", "show", "caller-7", "--since", since, "--json"])
    assert found.exit_code == 0 and json.loads(found.output)[0]["rows"] == [{"x": 9.0, "prediction": 0}]
    missing = runner.invoke(app, ["log", "show", "caller-7", "--since", now.strftime("%Y-%m-%d %H:%M:%S")])
    assert missing.exit_code == 1
    assert f"no request caller-7 logged from {now:%Y-%m-%d %H:%M:%S} UTC in the inference log at sqlite:///" in (
        missing.output
    )
    bad = runner.invoke(app, ["log", "show", "a b"])
    assert bad.exit_code == 2 and "'a b' is not a request id" in bad.output


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e9"])
def test_log_prune_refuses_an_age_it_cannot_use_naming_the_option(home: Path, value: str) -> None:
    result = runner.invoke(app, ["log", "prune", "--older-than-days", value])
    assert result.exit_code == 2 and "--older-than-days must be a number from 0 to 36,500" in result.output


def test_stop_with_nothing_serving_says_so_without_a_flow_run(home: Path) -> None:
    # No state and no backends: nothing to stop, so no flow run (and no temporary Prefect server to start).
    result = runner.invoke(app, ["stop"])
    assert result.exit_code == 0 and result.output.strip() == "nothing was serving"


def test_prefect_logs_slipways_own_errors_without_their_traceback() -> None:
    # A failed run's exception as Prefect logs it: slipway's errors lose the stack (the message says it all, and
    # the command prints it again); any other exception keeps it.
    import logging
    import sys

    from flows.cli import _DomainErrorsWithoutTraceback
    from tasks.errors import RegistryError

    def record_of(exc: Exception) -> logging.LogRecord:
        try:
            raise exc
        except Exception:
            return logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())

    own, other = record_of(RegistryError("no version 3")), record_of(KeyError("bug"))
    keep = _DomainErrorsWithoutTraceback()

    assert keep.filter(own) and keep.filter(other)
    assert own.exc_info is None and "Traceback" not in logging.Formatter().format(own)
    assert other.exc_info is not None and "Traceback" in logging.Formatter().format(other)


@pytest.mark.parametrize("width", [80, 200])
def test_report_lists_verdicts_with_whole_report_paths_relative_to_the_current_folder(
    home: Path, monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    # Given two verdicts whose reports lie under the current folder, when `slipway report` prints to a pipe
    # (80 columns) or a wide terminal, then each report's path is on one line, whole, relative to the folder:
    # in a table when it fits, else one line per verdict with its path under it.
    from datetime import UTC, datetime

    from configs import load_config
    from tasks.observe import VerdictRecord, append_verdict

    monkeypatch.chdir(home.parent)
    monkeypatch.setenv("COLUMNS", str(width))  # read by rich at each print (the console has no fixed width)
    monitor = load_config().settings.monitor_dir
    for minute, status, action in ((1, "ok", "none"), (2, "drift", "retrain")):
        folder = monitor / f"20261130T23{minute:02d}00000000Z"
        append_verdict(
            monitor,
            VerdictRecord(
                decided_at=datetime(2026, 11, 30, 23, minute, tzinfo=UTC),
                status=status,
                action=action,
                reason="r",
                model_version="3",
                rows=300,
                drift_share=minute / 2,
                report_dir=folder,
                html=folder / "drift.html",
            ),
        )
    result = runner.invoke(app, ["report"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for minute in (1, 2):
        path = f".slipway/monitor/20261130T23{minute:02d}00000000Z/drift.html"
        assert any(path in line for line in lines), result.output
    assert all(len(line) <= width for line in lines), result.output
    assert "retrain" in result.output and "1.00" in result.output and "23:02:00" in result.output
