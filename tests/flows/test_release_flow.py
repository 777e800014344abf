"""The release pipeline as real flow runs: Prefect test harness, MLflow on SQLite, ONNX Runtime, BentoML build.

Each failure path ends with a clear error and no champion move.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnx.numpy_helper
import pytest

from tasks.errors import ConversionUnsupported, DataSourceError, GateFailed
from tasks.registry import TAG_STATUS, read_history
from tasks.resources import Registry

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness", "roomy_latency_budget")]


@pytest.fixture
def roomy_latency_budget(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests prove the wiring, not this machine's speed: a loaded 2-core box can push an in-process
    p99 past the shipped 5 ms budget. The gate itself is tested in tests/unit/test_validate.py and below."""
    monkeypatch.setenv("SLIPWAY__GATES__LATENCY__P99_MS", "100")


CLASSIFIER = "breast-cancer-classifier"


def _registry(home: Path) -> Registry:
    return Registry(
        f"sqlite:///{home / 'mlflow.db'}", f"sqlite:///{home / 'mlflow.db'}", "slipway", home / "mlartifacts"
    )


def test_release_of_the_example_end_to_end(
    home: Path, recwarn: pytest.WarningsRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    # Given the shipped example config, when the train flow runs (release as a subflow),
    # then a version is registered, converted, optimized, validated, built as a Bento and promoted.
    from flows.train import train_flow

    summary = train_flow()
    # MLflow's hint about integer columns (the target, the labels) is noise for slipway and stays out of the log
    # (a warning reaches either list: Prefect sends warnings to logging while a flow runs).
    hints = [str(w.message) for w in recwarn] + [r.getMessage() for r in caplog.records]
    assert not [h for h in hints if "Inferred schema contains integer column" in h]
    reg = _registry(home)
    assert summary.gate_passed
    assert summary.aliases == {"challenger": summary.version, "champion": summary.version}
    tags = reg.version_tags(CLASSIFIER, summary.version)
    assert tags[TAG_STATUS] == "released"
    assert tags["slipway.gates"] == "passed"
    assert tags["slipway.bento.tag"] == summary.bento_tag
    assert len(tags["slipway.onnx.sha256"]) == 64
    for key in ("run_id", "holdout_fingerprint", "config_hash", "git_commit"):
        assert tags[f"slipway.lineage.{key}"]
    report = json.loads(Path(summary.gate_report_path).read_text())
    assert {c["name"] for c in report["checks"]} == {"data_quality", "parity", "quality", "latency"}
    assert all(c["passed"] for c in report["checks"])
    run = reg.client.get_run(summary.run_id)
    assert "roc_auc" in run.data.metrics and run.data.tags["slipway.lineage.data_fingerprint"]
    assert any(a.path == "slipway" for a in reg.client.list_artifacts(summary.run_id))
    assert [e.action for e in read_history(reg, CLASSIFIER)] == ["release"]
    # And `slipway models` shows the version with its aliases, gates, ONNX variant and Bento
    from typer.testing import CliRunner

    from flows.cli import app

    listed = CliRunner().invoke(app, ["models"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    line = next(line for line in listed.output.splitlines() if line.startswith(f"│ {summary.version} "))
    cells = [cell.strip() for cell in line.strip("│").split("│")]
    assert cells == [
        summary.version,
        "challenger, champion",
        "released",
        "passed",
        summary.onnx_variant,
        summary.bento_tag,
    ]


def test_worse_model_than_champion_is_rejected_and_champion_stays(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a champion, when a much weaker model (one boosting round of stumps) is released,
    # then the quality gate fails with both numbers, the version is tagged rejected and no alias moves.
    from flows.train import train_flow

    first = train_flow()
    monkeypatch.setenv("SLIPWAY__MODEL__PARAMS__MAX_ITER", "1")
    monkeypatch.setenv("SLIPWAY__MODEL__PARAMS__MAX_LEAF_NODES", "2")
    with pytest.raises(GateFailed) as info:
        train_flow()
    message = str(info.value)
    assert "[FAIL] quality" in message and f"champion_version={first.version}" in message
    reg = _registry(home)
    assert reg.aliases(CLASSIFIER) == {"challenger": first.version, "champion": first.version}
    rejected = str(int(first.version) + 1)
    assert reg.version_tags(CLASSIFIER, rejected)[TAG_STATUS] == "rejected"


def test_tampered_onnx_fails_parity(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a conversion whose output graph is tampered with (a tree leaf weight changed),
    # when the release runs, then the parity gate fails naming the difference and no alias moves.
    from tasks import convert

    real = convert.to_onnx.fn

    def tampered(*args, **kwargs):
        result = real(*args, **kwargs)
        model = onnx.load(result.path)
        for node in model.graph.node:
            for attr in node.attribute:
                # Trees carry float64 thresholds and leaf weights as tensors (see tasks/convert.py).
                if attr.name in ("class_weights_as_tensor", "nodes_values_as_tensor"):
                    tampered_values = onnx.numpy_helper.to_array(attr.t) * 1.5 + 0.1
                    attr.t.CopyFrom(onnx.numpy_helper.from_array(tampered_values, attr.t.name))
        onnx.save(model, result.path)
        return result

    monkeypatch.setattr(convert.to_onnx, "fn", tampered)
    from flows.train import train_flow

    with pytest.raises(GateFailed, match=r"\[FAIL\] parity: .*max_abs_diff="):
        train_flow()
    assert _registry(home).aliases(CLASSIFIER) == {}


def test_bad_training_data_fails_expectations_before_anything_is_registered(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from examples.breast_cancer import load_data

    frame = load_data()
    frame.loc[:20, "mean_radius"] = -5.0  # impossible radii
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path)
    monkeypatch.setenv("SLIPWAY__DATA__KIND", "file")
    monkeypatch.setenv("SLIPWAY__DATA__PATH", str(path))
    from flows.train import train_flow

    with pytest.raises(DataSourceError, match="mean_radius"):
        train_flow()
    assert not _registry(home).model_exists(CLASSIFIER)


def test_unsupported_estimator_is_named(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIPWAY__MODEL__ENTRYPOINT", "tests.flows.unsupported:build_model")
    from flows.train import train_flow

    with pytest.raises(ConversionUnsupported, match="LabelSpreading"):
        train_flow()
    reg = _registry(home)
    assert reg.aliases(CLASSIFIER) == {}
    assert reg.version_tags(CLASSIFIER, "1")[TAG_STATUS] == "rejected"


def test_promote_and_two_rollbacks_through_the_flows(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given three released champions, when rolled back twice, then the champion is the first one,
    # and the history records each move with its action.
    from flows.promotion import promote, rollback
    from flows.train import train_flow

    monkeypatch.setenv("SLIPWAY__GATES__QUALITY__MIN_IMPROVEMENT", "-1")  # equal models may replace each other
    versions = [train_flow().version for _ in range(3)]
    reg = _registry(home)
    assert reg.aliases(CLASSIFIER)["champion"] == versions[2]
    rollback(reason="latency regression")
    assert reg.aliases(CLASSIFIER)["champion"] == versions[1]
    rollback(reason="still bad")
    assert reg.aliases(CLASSIFIER)["champion"] == versions[0]
    promote(version=versions[2], reason="fixed upstream")
    assert reg.aliases(CLASSIFIER)["champion"] == versions[2]
    actions = [e.action for e in read_history(reg, CLASSIFIER)]
    assert actions == ["release", "release", "release", "rollback", "rollback", "promote"]
    # `slipway models` says which version was rolled back and why; the promotion cleared it for versions[2].
    from typer.testing import CliRunner

    from flows.cli import app

    listed = CliRunner().invoke(app, ["models"], env={"COLUMNS": "80"})  # as `make` shows it: one line a version
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    rows = {line.split()[0].removeprefix("v"): line for line in lines if line.startswith("v")}
    assert "rolled back" in rows[versions[1]] and "rolled back" not in rows[versions[2]], listed.output
    # the Bento tag under its version, whole (not folded across lines), as the registry recorded it
    tag = reg.client.get_model_version(CLASSIFIER, versions[2]).tags["slipway.bento.tag"]
    assert lines[lines.index(rows[versions[2]]) + 1].split() == ["Bento", tag], listed.output
    # Deploying the rolled-back version is allowed (asked for by number) but said out loud.
    from tasks.deploy import resolve_target

    target = resolve_target.fn(reg, CLASSIFIER, "champion", home / "bentoml", versions[1])
    assert target.registry_version == versions[1]
    assert target.warning is not None and "was rolled back (still bad)" in target.warning
    assert f"champion alias points at v{versions[2]}" in target.warning
    assert resolve_target.fn(reg, CLASSIFIER, "champion", home / "bentoml").warning is None


def test_regression_example_releases(home: Path) -> None:
    # Given the second shipped config (a random-forest regressor), when trained and released, then it passes
    # parity on its raw holdout rows (float64 feeds) and becomes champion.
    from flows.train import train_flow

    summary = train_flow(config_file=str(Path(__file__).resolve().parents[2] / "examples" / "regression.yaml"))
    assert summary.gate_passed and summary.aliases["champion"] == summary.version
    parity = next(c for c in summary.checks if c.name == "parity")
    assert parity.measured["max_abs_diff"] <= 1e-4
    quality = next(c for c in summary.checks if c.name == "quality")
    assert quality.measured["metric"] == "rmse"


def test_mlp_example_releases_with_its_own_params(home: Path) -> None:
    # Given the MLP overlay (same data and preprocessing, a neural network), when trained and released, then it
    # passes parity on raw holdout rows and becomes champion, and its MLflow run holds the MLP's params only
    # (none of base.yaml's tree-ensemble settings).
    import mlflow

    from flows.train import train_flow

    summary = train_flow(config_file=str(Path(__file__).resolve().parents[2] / "examples" / "mlp.yaml"))
    assert summary.model_name == "breast-cancer-mlp"
    assert summary.gate_passed and summary.aliases["champion"] == summary.version
    parity = next(c for c in summary.checks if c.name == "parity")
    assert parity.measured["max_abs_diff"] <= 1e-4
    run = mlflow.MlflowClient(summary.tracking_uri).get_run(summary.run_id)
    assert run.data.params == {"hidden_layers": "1", "hidden_units": "64", "alpha": "0.0001", "max_iter": "1000"}


def test_latency_budget_is_enforced_in_the_release(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a latency budget no model can meet, when the example is released, then the latency gate fails
    # with the measured p99 and the budget, and no alias moves.
    monkeypatch.setenv("SLIPWAY__GATES__LATENCY__P99_MS", "0.000001")
    from flows.train import train_flow

    with pytest.raises(GateFailed, match=r"\[FAIL\] latency: .*p99_ms="):
        train_flow()
    assert _registry(home).aliases(CLASSIFIER) == {}
