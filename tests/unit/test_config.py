"""The config tree: every shipped config loads; a bad one fails before work, naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from configs import ConfigError, config_schema, load_config
from configs.loader import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[2]
ENVS = sorted(p.stem for p in (CONFIG_DIR / "env").glob("*.yaml"))
OVERLAYS = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("env", ENVS)
def test_every_shipped_env_loads(env: str) -> None:
    loaded = load_config(env=env, environ={})
    assert loaded.settings.model.name
    assert loaded.expectations_path().exists(), "the configured expectation suite must ship with the config"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_shipped_example_overlay_loads(overlay: Path) -> None:
    # Given a shipped overlay, when loaded, then its suite exists and its builder takes every param it is given
    # (the builders refuse a param they do not read).
    from tasks.train import import_entrypoint

    loaded = load_config(overlay=overlay, environ={})
    assert loaded.expectations_path().exists()
    model = loaded.settings.model
    assert import_entrypoint(model.entrypoint)(dict(model.params)) is not None


def test_a_layer_naming_another_entrypoint_starts_its_params_afresh(tmp_path: Path) -> None:
    # Given base.yaml's tree-ensemble params, when an overlay names another builder, then only the overlay's params
    # (and the environment's) reach it; an overlay for the same builder still merges key by key.
    mlp = "model:\n  entrypoint: examples.breast_cancer:build_mlp_model\n  params:\n    alpha: 0.01\n"
    other = _write(tmp_path, mlp)
    loaded = load_config(overlay=other, environ={"SLIPWAY__MODEL__PARAMS__MAX_ITER": "50"})
    assert loaded.settings.model.params == {"alpha": 0.01, "max_iter": 50}
    same = _write(tmp_path, "model:\n  entrypoint: examples.breast_cancer:build_model\n  params:\n    max_iter: 7\n")
    assert load_config(overlay=same, environ={}).settings.model.params == {
        "max_iter": 7,
        "learning_rate": 0.1,
        "max_leaf_nodes": 15,
    }
    bare = _write(tmp_path, "model:\n  entrypoint: examples.diabetes:build_model\n")
    assert load_config(overlay=bare, environ={}).settings.model.params == {}


def test_a_param_the_builder_does_not_read_is_refused_by_name() -> None:
    # Given a misspelt param, when the model is built for training, then the error names it, the builder and
    # what the builder reads, instead of training with the default.
    from examples.breast_cancer import load_data
    from tasks.errors import ModelBuildError
    from tasks.train import fit_model

    with pytest.raises(ModelBuildError) as info:
        fit_model.fn("examples.breast_cancer:build_mlp_model", {"hidden_unit": 8}, load_data(), "malignant")
    message = str(info.value)
    assert "examples.breast_cancer:build_mlp_model" in message and "['hidden_unit']" in message
    assert "'hidden_units'" in message


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_file_and_field(tmp_path: Path) -> None:
    # Given an overlay with a misspelt gate key, when loading, then the error names the file and the dotted path.
    bad = _write(tmp_path, "gates:\n  parity:\n    max_abs_dif: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(overlay=bad, environ={})
    assert f"{bad}: gates.parity.max_abs_dif: extra inputs are not permitted" in str(info.value)


def test_wrong_type_names_file_and_field(tmp_path: Path) -> None:
    bad = _write(tmp_path, "gates:\n  parity:\n    max_abs_diff_fp32: lots\n")
    with pytest.raises(ConfigError) as info:
        load_config(overlay=bad, environ={})
    assert f"{bad}: gates.parity.max_abs_diff_fp32: input should be a valid number" in str(info.value)


def test_missing_env_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"env/nope\.yaml: file not found"):
        load_config(env="nope", environ={})


def test_malformed_yaml_is_named(tmp_path: Path) -> None:
    bad = _write(tmp_path, "model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(overlay=bad, environ={})


def test_environment_variable_overrides_and_is_named_on_error() -> None:
    loaded = load_config(environ={"SLIPWAY__SERVING__PORT": "8123"})
    assert loaded.settings.serving.port == 8123
    with pytest.raises(ConfigError) as info:
        load_config(environ={"SLIPWAY__SERVING__PORT": "eighty"})
    assert "environment variable SLIPWAY__SERVING__PORT: serving.port" in str(info.value)


def test_cross_field_rule_is_reported(tmp_path: Path) -> None:
    bad = _write(tmp_path, "data:\n  kind: file\n")
    with pytest.raises(ConfigError, match=rf"{bad}: data.kind: data.kind='file' needs data.path"):
        load_config(overlay=bad, environ={})


def test_a_cross_field_rule_names_the_field_set_last_and_where_it_was_set(tmp_path: Path) -> None:
    # Given the same conflict (retention shorter than the window) reached by setting either side in a different
    # layer, then the error names the field that was set last, with that layer, never the section or <root>.
    def refusal(text: str, environ: dict[str, str] | None = None) -> tuple[Path, str]:
        path = tmp_path / f"overlay-{len(list(tmp_path.iterdir()))}.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(overlay=path, environ=environ or {})
        return path, str(info.value).splitlines()[-1].strip()

    window, line = refusal("monitor:\n  window_minutes: 100000\n")
    assert line.startswith(f"{window}: monitor.window_minutes: serving.inference_log_retention_days (30 days)")
    _, line = refusal("monitor:\n  window_minutes: 100000\n", {"SLIPWAY__SERVING__INFERENCE_LOG_RETENTION_DAYS": "1"})
    assert line.startswith("environment variable SLIPWAY__SERVING__INFERENCE_LOG_RETENTION_DAYS: serving.inference_log")
    aliases, line = refusal("promotion:\n  challenger_alias: champion\n")
    must_differ = "challenger_alias and champion_alias must differ (both are 'champion')"
    assert line == f"{aliases}: promotion.challenger_alias: {must_differ}"
    remote, line = refusal("serving:\n  target: remote\n")
    assert line.startswith(f"{remote}: serving.target: target is remote but serving.remote is not set")


def test_a_retention_shorter_than_the_monitor_window_is_refused_naming_both(tmp_path: Path) -> None:
    # Given a retention of 30 minutes against the monitor's 60-minute window, when loading, then the error names
    # the file and both fields with their values; null (keep everything) is accepted.
    bad = _write(tmp_path, "serving:\n  inference_log_retention_days: 0.02\n")
    with pytest.raises(ConfigError) as info:
        load_config(overlay=bad, environ={})
    message = str(info.value)
    assert str(bad) in message
    assert "serving.inference_log_retention_days (0.02 days) is shorter than monitor.window_minutes (60" in message
    forever = _write(tmp_path, "serving:\n  inference_log_retention_days: null\n")
    assert load_config(overlay=forever, environ={}).settings.serving.inference_log_retention_days is None
    assert load_config(environ={}).settings.serving.inference_log_retention_days == 30.0


def test_api_keys_are_secret_and_left_out_of_the_hash() -> None:
    with_key = load_config(environ={"SLIPWAY__SERVING__API_KEYS": '["s3cr3t"]'})
    without = load_config(environ={})
    assert "s3cr3t" not in repr(with_key.settings)
    assert with_key.settings_hash() == without.settings_hash()


def test_schema_documents_fields() -> None:
    schema = config_schema()
    assert "gates" in schema["properties"]
    assert "description" in schema["$defs"]["ParityGate"]["properties"]["max_abs_diff_fp32"]
