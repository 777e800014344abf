"""serving.target remote, one function at a time: its config, the command template, reading /metrics, failures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from configs import ConfigError, load_config
from configs.settings import DEPLOY_PLACEHOLDERS, RemoteServingSettings
from tasks.errors import ServingError
from tasks.remote import RemoteTarget, remote_view, render_command, roll_out, served_versions

TARGET = RemoteTarget(
    model_name="churn",
    model_version="7",
    bento_tag="churn:v7-abc123",
)


def remote(**fields: object) -> RemoteServingSettings:
    return RemoteServingSettings.model_validate({"url": "http://127.0.0.1:9", "deploy_command": ["true"]} | fields)


def overlay(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "remote.yaml"
    path.write_text(text)
    return path


def test_remote_target_without_remote_section_names_the_field_and_file(tmp_path: Path) -> None:
    bad = overlay(tmp_path, "serving:\n  target: remote\n")
    with pytest.raises(ConfigError) as info:
        load_config(overlay=bad, environ={})
    assert str(bad) in str(info.value) and "serving" in str(info.value) and "serving.remote" in str(info.value)


@pytest.mark.parametrize(
    ("fields", "field", "named"),
    [
        # a placeholder nobody fills
        ("    deploy_command: [kubectl, set, image, 'deployment/x', 'bento={tag}']\n", "deploy_command", "{tag}"),
        # the image template naming itself (it would render empty)
        (
            "    deploy_command: [deploy, '{image}']\n    image: 'registry.example.com/{image}'\n",
            "image",
            "names {image}",
        ),
    ],
    ids=["unknown-placeholder", "image-names-itself"],
)
def test_a_placeholder_that_cannot_be_filled_is_refused_by_name(
    tmp_path: Path, fields: str, field: str, named: str
) -> None:
    bad = overlay(tmp_path, "serving:\n  target: remote\n  remote:\n    url: http://svc:3000\n" + fields)
    with pytest.raises(ConfigError) as info:
        load_config(overlay=bad, environ={})
    text = str(info.value)
    assert f"{bad}: serving.remote.{field}" in text and named in text and "bento_version" in text


def test_every_placeholder_the_config_allows_is_one_the_command_gets() -> None:
    # The config validates against DEPLOY_PLACEHOLDERS and RemoteTarget fills them: the two lists must agree.
    target = RemoteTarget(model_name="churn", model_version="3", bento_tag="churn-classifier:v3")
    values = target.values("registry.example.com/churn:{bento_version}")
    assert set(values) == set(DEPLOY_PLACEHOLDERS)
    assert values["image"] == "registry.example.com/churn:v3"


def test_a_valid_remote_overlay_loads(tmp_path: Path) -> None:
    good = overlay(
        tmp_path,
        "serving:\n  target: remote\n  remote:\n    url: http://svc:3000\n"
        "    deploy_command: [kubectl, set, image, 'deployment/x', 'bento={image}']\n"
        "    image: 'registry.example.com/churn:{bento_version}'\n",
    )
    serving = load_config(overlay=good, environ={}).settings.serving
    assert serving.target == "remote" and serving.remote is not None
    assert serving.remote.url == "http://svc:3000"


def test_the_command_gets_the_version_bento_and_image() -> None:
    argv = render_command(
        ["kubectl", "set", "image", "deployment/{model_name}", "bento={image}", "--record={{x}}"],
        TARGET.values("registry.example.com/{bento_name}:{bento_version}"),
    )
    assert argv == [
        "kubectl",
        "set",
        "image",
        "deployment/churn",
        "bento=registry.example.com/churn:v7-abc123",
        "--record={x}",
    ]


def test_served_versions_reads_model_info_of_the_model_only() -> None:
    text = (
        "# TYPE slipway_model_info gauge\n"
        'slipway_model_info{model_name="churn",model_version="7"} 1.0\n'
        'slipway_model_info{model_name="churn",model_version="6"} 0.0\n'
        'slipway_model_info{model_name="other",model_version="2"} 1.0\n'
    )
    assert served_versions(text, "churn") == ["7"]
    assert served_versions("# nothing\n", "churn") == []


def test_an_unreachable_service_is_a_condition_not_an_exception() -> None:
    view = remote_view.fn(remote(), "churn", timeout_s=0.5)
    assert view.condition == "unreachable" and view.model_version is None
    assert "127.0.0.1:9" in view.detail


def test_a_command_not_on_path_names_itself() -> None:
    with pytest.raises(ServingError, match="'no-such-kubectl' is not on PATH; nothing was changed"):
        roll_out.fn(remote(deploy_command=["no-such-kubectl", "{model_version}"]), TARGET)


def test_a_command_that_hangs_is_stopped_at_the_timeout() -> None:
    hang = [sys.executable, "-c", "import time; print('rolling', flush=True); time.sleep(30)"]
    with pytest.raises(ServingError, match=r"did not finish in 1 s \(serving.remote.rollout_timeout_s\)"):
        roll_out.fn(remote(deploy_command=hang, rollout_timeout_s=1.0), TARGET)


def test_a_command_that_succeeds_but_serving_never_reports_the_version_fails_naming_the_url() -> None:
    with pytest.raises(ServingError, match=r"succeeded, but http://127.0.0.1:9 still says unreachable"):
        roll_out.fn(remote(rollout_timeout_s=1.0), TARGET, poll_s=0.2)
