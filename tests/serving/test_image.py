"""`slipway image`: BentoML's Dockerfile of a real Bento, written under the project home, and the image built from it.

Proves: the build context is BentoML's own (its generated Dockerfile, the Bento, the model it serves) under
<home>/images/<name>/<version>; the Dockerfile starts from Python 3.11, installs the Bento's pinned requirements,
runs `bentoml serve` on the Bento, exposes port 3000 and needs no BuildKit (the Docker SDK builds with the
classic builder); writing it again replaces it; without a Docker engine the error names where the engine was
looked for, why it failed and where the Dockerfile is, which exists by then, and the command exits 1, while
`--dockerfile-only` needs no engine; with an engine, the image builds, streams its progress and serves.
"""

# ruff: noqa: F811  (the fixtures imported from test_bento are used by name)
from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from serving.spec import MODEL_FILE, file_sha256
from tasks.errors import EngineUnavailable
from tasks.image import (
    DEFAULT_ENGINE,
    ImageContext,
    build_image,
    connect_engine,
    engine_address,
    image_folder,
    write_build_context,
)
from tests.serving.test_bento import (  # noqa: F401
    MODEL_VERSION,
    BuiltBento,
    built_bento,
    example_model,
)

MODEL_NAME = "breast-cancer-classifier"  # the configured model, so the CLI test resolves it from the registry
ENTRYPOINT = "/home/bentoml/bento/env/docker/entrypoint.sh"  # BentoML's, inside the image


@pytest.fixture(scope="module")
def image_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("image") / ".slipway"  # hidden, like the default project home


@pytest.fixture(scope="module")
def context(built_bento: BuiltBento, image_home: Path) -> ImageContext:
    """The build context of the example's Bento, written under a project home."""
    return write_build_context(built_bento.ref.tag, built_bento.home, image_home)


def closed_socket(folder: Path) -> Path:
    """A unix socket path nothing listens on (bound once, then closed): connecting is refused."""
    path = folder / "docker.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
    return path


# --- the Dockerfile and its build context ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_dockerfile_is_bentomls_and_serves_the_bento(
    context: ImageContext, built_bento: BuiltBento, image_home: Path
) -> None:
    # Given the build context written for the example's Bento
    text = context.dockerfile.read_text()
    name, version = built_bento.ref.tag.split(":")
    # Then it lives under <home>/images/<name>/<version>, and the Dockerfile is BentoML's generated one
    assert context.folder == image_home / "images" / name / version == image_folder(image_home, context.bento_tag)
    assert context.bento_tag == built_bento.ref.tag
    assert context.dockerfile == context.folder / "env" / "docker" / "Dockerfile"
    assert "THIS IS A GENERATED DOCKERFILE" in text
    # And the base image has Python 3.11 (the Python the Bento was built with)
    assert re.search(r"^FROM python:3\.11\S* ", text, flags=re.MULTILINE), text
    assert context.base_image.startswith("python:3.11")
    # And it installs the Bento's requirements, which pin what runs here
    assert "pip install -r $BENTO_PATH/env/python/requirements.txt" in text
    requirements = (context.folder / "env" / "python" / "requirements.txt").read_text()
    assert requirements == (built_bento.ref.path / "env" / "python" / "requirements.txt").read_text()
    for package in ("bentoml==", "onnxruntime==", "numpy==", "pydantic=="):
        assert package in requirements
    # And the container runs `bentoml serve` of the Bento: BentoML's entrypoint, whose default is that command
    assert f'ENTRYPOINT [ "{ENTRYPOINT}" ]' in text
    assert not re.search(r"^CMD ", text, flags=re.MULTILINE)  # no CMD: the entrypoint's default applies
    entrypoint = (context.folder / "env" / "docker" / "entrypoint.sh").read_text()
    assert 'set -- bentoml serve "$@" "$BENTO_PATH"' in entrypoint
    # And it exposes the server's port
    assert re.search(r"^EXPOSE 3000$", text, flags=re.MULTILINE)
    assert 3000 in context.ports
    # And the classic builder can build it: no BuildKit-only syntax
    assert "--mount=" not in text and "# syntax" not in text
    # And the context holds the Bento's source and the very model file the store holds
    assert (context.folder / "src" / "serving" / "service.py").is_file()
    model_name, model_version = built_bento.ref.model_tag.split(":")
    copied = context.folder / "models" / model_name / model_version / MODEL_FILE
    stored = built_bento.home / "models" / model_name / model_version / MODEL_FILE
    assert file_sha256(copied) == file_sha256(stored)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_writing_the_context_again_replaces_it(context: ImageContext, built_bento: BuiltBento, image_home: Path):
    # Given a file left in the context by hand
    (context.folder / "stray.txt").write_text("left over")
    # When the context is written again, by the `latest` tag
    again = write_build_context(f"{context.bento_tag.split(':')[0]}:latest", built_bento.home, image_home)
    # Then it is the same folder, written afresh, with nothing half-written beside it
    assert again == context
    assert not (context.folder / "stray.txt").exists()
    assert sorted(p.name for p in context.folder.parent.iterdir()) == [context.folder.name]


# --- without a Docker engine ----------------------------------------------------------------------------------


def test_without_an_engine_the_error_says_where_it_looked_and_where_the_dockerfile_is(
    tmp_path: Path,
) -> None:
    # Given DOCKER_HOST naming a unix socket nothing listens on, and a written context
    sock = closed_socket(tmp_path)
    dockerfile = tmp_path / "ctx" / "env" / "docker" / "Dockerfile"
    context = ImageContext(
        bento_tag="m:v1", folder=tmp_path / "ctx", dockerfile=dockerfile, base_image="python:3.11-slim", ports=(3000,)
    )
    # When the engine is asked for
    with pytest.raises(EngineUnavailable) as failed:
        connect_engine({"DOCKER_HOST": f"unix://{sock}"}, context)
    # Then the error names the address, where it came from, why it failed, what to do and where the Dockerfile is
    message = str(failed.value)
    assert f"no Docker engine reachable at unix://{sock} (from DOCKER_HOST): Connection refused" in message
    assert "start Docker, or set DOCKER_HOST" in message
    assert f"the Dockerfile is at {dockerfile}" in message
    assert f"docker build -f {dockerfile} -t m:v1 {tmp_path / 'ctx'}" in message
    assert (failed.value.address, failed.value.reason) == (f"unix://{sock} (from DOCKER_HOST)", "Connection refused")


def test_the_default_engine_address_says_docker_host_is_unset() -> None:
    assert engine_address({}) == f"{DEFAULT_ENGINE} (DOCKER_HOST unset)"
    assert engine_address({"DOCKER_HOST": "tcp://10.0.0.5:2376"}) == "tcp://10.0.0.5:2376 (from DOCKER_HOST)"


# --- the CLI ------------------------------------------------------------------------------------------------


def _register_champion(registry: Any, bento: BuiltBento) -> None:
    """Versions 1..MODEL_VERSION of the configured model; the last names the example's Bento and is champion."""
    from serving.spec import read_spec
    from tasks.deploy import TAG_BENTO

    client = registry.client
    client.create_registered_model(MODEL_NAME)
    for _ in range(int(MODEL_VERSION)):
        created = client.create_model_version(MODEL_NAME, source=str(bento.home / "models"))
    client.set_model_version_tag(MODEL_NAME, created.version, TAG_BENTO, bento.ref.tag)
    # As tasks.registry.record_release records it: the hash resolve_target checks the stored model against.
    spec = read_spec(bento.home / "models" / bento.ref.model_tag.replace(":", "/"))
    client.set_model_version_tag(MODEL_NAME, created.version, "slipway.onnx.sha256", spec.sha256)
    registry.set_alias(MODEL_NAME, "champion", created.version)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_writes_the_dockerfile_then_without_an_engine_exits_1_naming_it(
    registry: Any, home: Path, built_bento: BuiltBento, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.cli import app

    # Given the champion released with the example's Bento, and DOCKER_HOST naming a socket nobody serves
    (home / "bentoml").symlink_to(built_bento.home, target_is_directory=True)
    _register_champion(registry, built_bento)
    sock = closed_socket(tmp_path)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    runner = CliRunner()
    name, version = built_bento.ref.tag.split(":")
    dockerfile = home / "images" / name / version / "env" / "docker" / "Dockerfile"

    # When only the Dockerfile is asked for, then it is written and the output says where and how to build it
    written = runner.invoke(app, ["image", "--dockerfile-only"])
    assert written.exit_code == 0, written.output
    assert dockerfile.is_file()
    flat = " ".join(written.output.split())  # rich wraps long paths
    assert str(dockerfile) in flat and built_bento.ref.tag in flat and "docker build -f" in flat

    # When the image is asked for, then the Dockerfile is (re)written and the command fails naming the engine
    dockerfile.unlink()
    built = runner.invoke(app, ["image"])
    assert built.exit_code == 1, built.output
    flat = " ".join(built.output.split())
    assert f"EngineUnavailable: no Docker engine reachable at unix://{sock} (from DOCKER_HOST)" in flat
    assert f"the Dockerfile is at {dockerfile}" in flat
    assert dockerfile.is_file()

    # When a version without a Bento is asked for, then the error names it and exits 1
    missing = runner.invoke(app, ["image", "9", "--dockerfile-only"])
    assert missing.exit_code == 1 and "no version 9" in missing.output


def test_image_command_has_help() -> None:
    from flows.cli import app

    result = CliRunner().invoke(app, ["image", "--help"])
    assert result.exit_code == 0 and "--dockerfile-only" in result.output, result.output


# --- with a Docker engine -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.timeout(1800)
def test_the_image_builds_and_serves_the_model(context: ImageContext) -> None:
    # Given a reachable Docker engine (DOCKER_HOST, else the local socket)
    try:
        client = connect_engine(os.environ, context)
    except EngineUnavailable as exc:
        pytest.skip(f"no Docker engine reachable ({exc.address}: {exc.reason})")
    name, version = context.bento_tag.split(":")
    tag = f"slipway-test-{name}:{version}"
    lines: list[str] = []
    try:
        # When the image is built
        built = build_image(client, context, tag, on_progress=lines.append)
        # Then the build streamed its steps, and the image runs BentoML's entrypoint and exposes the port
        assert any("Step" in line or "RUN" in line for line in lines), lines[:20]
        config = client.images.get(tag).attrs["Config"]
        assert built.image_id == client.images.get(tag).id
        assert "3000/tcp" in config["ExposedPorts"] and config["Entrypoint"] == [ENTRYPOINT]
        # And a container of it serves: /readyz answers 200, asked from inside the container (the engine may run on
        # another host, where a port it publishes is not on 127.0.0.1 here)
        container = client.containers.run(tag, detach=True, environment={"SLIPWAY_WORKERS": "1"})
        try:
            probe = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:3000/readyz', timeout=5).status)"
            deadline = time.monotonic() + 180
            while True:
                container.reload()
                assert container.status == "running", container.logs().decode(errors="replace")[-3000:]
                exit_code, output = container.exec_run(["python", "-c", probe])
                if exit_code == 0 and output.strip() == b"200":
                    break
                assert time.monotonic() < deadline, container.logs().decode(errors="replace")[-3000:]
                time.sleep(2)
        finally:
            container.remove(force=True)
    finally:
        if any(tag in image.tags for image in client.images.list()):
            client.images.remove(tag, force=True)
