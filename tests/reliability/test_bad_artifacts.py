"""Bad input that is not a request: malformed and hostile configs, corrupt or truncated ONNX files, corrupt or
tampered Bento models, a model whose signature does not match its data. Each is refused with an error that names
what is wrong, before anything changes (no home folder, nothing stored, no version registered, nothing served).

The config cases go through the real `slipway release` command line; the ONNX and Bento cases through the
functions every path that loads them uses (serving.predictor.Predictor.load, tasks.package.save_bento_model,
tasks.deploy.resolve_target), on real files in a real BentoML store layout and a real SQLite MLflow registry; the
signature case through the real release flow.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from serving.spec import MODEL_FILE, SPEC_FILE, ModelIntegrityError, ServingSpec, file_sha256
from tests.reliability.conftest import Figures
from tests.serving.test_bento import _tiny_regressor

runner = CliRunner()

# A YAML "billion laughs": nine levels of nine aliases, 387 million strings once expanded.
_ALIAS_BOMB = "model:\n  params:\n    a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)
)


@dataclass(frozen=True)
class ConfigCase:
    name: str
    yaml: str | None  # None: the overlay file does not exist
    env: dict[str, str]
    expect: tuple[str, ...]  # substrings the error must contain
    secret: str | None = None  # must never be printed


def _config_cases(marker: Path) -> list[ConfigCase]:
    return [
        ConfigCase("not YAML", "serving: [port: 1\n", {}, ("not valid YAML",)),
        ConfigCase("top level a list", "- serving\n- port\n", {}, ("top level must be a mapping",)),
        ConfigCase("unknown key", "serving:\n  hots: 0.0.0.0\n", {}, ("serving.hots", "extra inputs")),
        ConfigCase("unknown section", "servng:\n  port: 1\n", {}, ("servng",)),
        ConfigCase("wrong type", "serving:\n  port: three thousand\n", {}, ("serving.port", "valid integer")),
        ConfigCase("out of range", "serving:\n  port: 70000\n", {}, ("serving.port", "65535")),
        ConfigCase("bad choice", "promotion:\n  policy: yolo\n", {}, ("promotion.policy",)),
        ConfigCase("same alias twice", "promotion:\n  champion_alias: challenger\n", {}, ("must differ",)),
        ConfigCase("incomplete data source", "data:\n  kind: sql\n", {}, ("data.url", "data.query")),
        ConfigCase("missing file", None, {}, ("file not found",)),
        ConfigCase(
            "python object tag (code execution)",
            f"project:\n  name: !!python/object/apply:os.system ['touch {marker}']\n",
            {},
            ("not valid YAML",),
        ),
        ConfigCase("alias bomb (billion laughs)", _ALIAS_BOMB, {}, ("YAML alias", "not allowed")),
        ConfigCase(
            "environment variable of the wrong type",
            "",
            {"SLIPWAY__SERVING__PORT": "[1, 2]"},
            ("environment variable SLIPWAY__SERVING__PORT", "serving.port"),
        ),
        ConfigCase(
            "API key in a config file",
            "serving:\n  api_keys: [sk-file-secret-8d1f]\n",
            {},
            ("serving.api_keys", "must not be in a config file", "SLIPWAY__SERVING__API_KEYS"),
            secret="sk-file-secret-8d1f",
        ),
        ConfigCase(
            "database password in a config file",
            "serving:\n  inference_log_url: postgresql://app:pw-file-secret-77c2@127.0.0.1/logs\n",
            {},
            ("serving.inference_log_url", "holds a password"),
            secret="pw-file-secret-77c2",
        ),
    ]


@pytest.mark.reliability("bad-config")
@pytest.mark.timeout(120)
def test_malformed_and_hostile_configs_are_refused_before_any_work(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, figures: Figures
) -> None:
    marker = tmp_path / "pwned"
    cases = _config_cases(marker)
    figures.tried = "`slipway release --config FILE` with " + ", ".join(c.name for c in cases)
    problems: list[str] = []
    for case in cases:
        # Given one bad overlay (or variable)
        overlay = tmp_path / f"{case.name.replace(' ', '_')}.yaml"
        if case.yaml is not None:
            overlay.write_text(case.yaml)
        with monkeypatch.context() as patch:
            for key, value in case.env.items():
                patch.setenv(key, value)
            # When a release is started with it
            result = runner.invoke(app(), ["release", "--run-id", "r-0", "--config", str(overlay)])
        figures.times += 1
        output = result.output
        # Then it exits 2 naming the file (or variable) and the field, prints no secret, and changed nothing
        wanted = [*case.expect, "config error"] + ([str(overlay)] if not case.env else [])
        missing = [w for w in wanted if w.lower() not in output.lower()]
        if result.exit_code != 2 or missing:
            problems.append(f"{case.name}: exit {result.exit_code}, missing {missing} in: {output[-400:]}")
        if case.secret is not None and case.secret in output:
            problems.append(f"{case.name}: the secret was printed")
        if home.exists():
            problems.append(f"{case.name}: {home} was created")
    if marker.exists():
        problems.append("the python tag ran a command")
    figures.add(cases=len(cases), refused_with_file_and_field=len(cases) - len(problems), home_created=home.exists())
    assert not problems, "\n".join(problems)


def app() -> Any:
    from flows.cli import app as slipway

    return slipway


@pytest.mark.reliability("secrets-source")
def test_secrets_come_from_the_environment_or_the_secrets_file_only(tmp_path: Path, figures: Figures) -> None:
    from configs import ConfigError, load_config

    key, password = "sk-env-2b7a", "pw-secret-file-91de"
    secrets_file = tmp_path / "secrets.yaml"
    secrets_file.write_text(
        f"serving:\n  inference_log_url: postgresql://app:{password}@127.0.0.1/logs\n  api_keys: [sk-file-3c0e]\n"
    )
    # From the environment and from the secrets file, secrets load
    loaded = load_config(environ={"SLIPWAY__SERVING__API_KEYS": json.dumps([key])})
    assert [k.get_secret_value() for k in loaded.settings.serving.api_keys] == [key]
    from_file = load_config(environ={"SLIPWAY_SECRETS_FILE": str(secrets_file)})
    assert password in (from_file.settings.serving.inference_log_url or "")
    assert [k.get_secret_value() for k in from_file.settings.serving.api_keys] == ["sk-file-3c0e"]
    # And the environment wins over the secrets file
    both = load_config(
        environ={"SLIPWAY_SECRETS_FILE": str(secrets_file), "SLIPWAY__SERVING__API_KEYS": json.dumps([key])}
    )
    assert [k.get_secret_value() for k in both.settings.serving.api_keys] == [key]
    # From a config file they are refused, naming the file and the field, never the value
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"serving:\n  api_keys: [{key}]\n")
    with pytest.raises(ConfigError) as refused:
        load_config(overlay=overlay, environ={})
    assert f"{overlay}: serving.api_keys" in str(refused.value) and key not in str(refused.value)
    # And the secrets stay out of the recorded config hash's input and of `config show`
    assert key not in loaded.settings.model_dump_json(exclude={"serving": {"api_keys"}})
    figures.tried = "API key and database password from SLIPWAY__*, from SLIPWAY_SECRETS_FILE, from a config file"
    figures.times = 4
    figures.add(loaded_from_env=1, loaded_from_secrets_file=1, refused_from_config_file=1)


# --- ONNX files -------------------------------------------------------------------------------------------------


# A flipped byte inside a name leaves a well-formed graph; only the recorded hash can tell it apart.
_STILL_ONNX = frozenset({"a byte flipped in the graph"})


def _corruptions(original: bytes) -> dict[str, bytes]:
    return {
        "truncated to half": original[: len(original) // 2],
        "truncated by one byte": original[:-1],
        "empty": b"",
        "random bytes": bytes((i * 131 + 7) % 256 for i in range(len(original))),
        "a text file": b"this is not an ONNX model\n",
        "a byte flipped in the graph": original[:40] + bytes([original[40] ^ 0xFF]) + original[41:],
    }


@pytest.mark.reliability("corrupt-onnx")
def test_corrupt_or_truncated_onnx_files_are_refused(tmp_path: Path, figures: Figures) -> None:
    from serving.predictor import Predictor
    from tasks.errors import InvalidModelArtifact
    from tasks.package import save_bento_model
    from tasks.types import FeatureSpec, ModelSchema

    good = tmp_path / "good"
    spec = _tiny_regressor(good)
    original = (good / MODEL_FILE).read_bytes()
    schema = ModelSchema(
        task="regression",
        features=tuple(FeatureSpec(name=f.name, dtype=f.dtype) for f in spec.features),
        target="y",
    )
    store = tmp_path / "bentoml"
    problems: list[str] = []
    tried = 0
    for name, content in _corruptions(original).items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        (folder / MODEL_FILE).write_bytes(content)
        # Corrupted after it was stored: the descriptor's hash no longer matches, the service refuses it
        (folder / SPEC_FILE).write_text(spec.model_dump_json())
        tried += 1
        try:
            Predictor.load(folder, spec)
            problems.append(f"{name}: loaded despite the hash mismatch")
        except ModelIntegrityError as exc:
            if "sha256" not in str(exc):
                problems.append(f"{name}: unclear error {exc}")
        if name in _STILL_ONNX:
            continue  # a well-formed model after all: only its hash tells it from the one that was stored
        # Corrupted before it was stored (the descriptor records its hash): ONNX Runtime cannot load it, and the
        # error says so, naming the file
        matching = spec.model_copy(update={"sha256": file_sha256(folder / MODEL_FILE)})
        tried += 1
        try:
            Predictor.load(folder, matching)
            problems.append(f"{name}: loaded")
        except ModelIntegrityError as exc:
            if str(folder / MODEL_FILE) not in str(exc) or "ONNX Runtime" not in str(exc):
                problems.append(f"{name}: error does not name the file: {exc}")
        # Offered for packaging: refused before anything is stored
        tried += 1
        try:
            save_bento_model.fn(folder / MODEL_FILE, schema, "prediction", "prediction", "tiny", "1", store)
            problems.append(f"{name}: stored as a BentoML model")
        except InvalidModelArtifact as exc:
            if "not a valid ONNX model" not in str(exc) or str(folder / MODEL_FILE) not in str(exc):
                problems.append(f"{name}: unclear error {exc}")
    stored = list((store / "models").rglob(MODEL_FILE)) if store.exists() else []
    figures.tried = (
        "ONNX files truncated, emptied, replaced by random bytes or text, one byte flipped: served after the "
        "descriptor was written, served with a matching descriptor, and offered for packaging"
    )
    figures.times = tried
    figures.add(corruptions=len(_corruptions(original)), refused=tried - len(problems), models_stored=len(stored))
    assert not problems, "\n".join(problems)
    assert stored == []


# --- Bento models in the store, against what the release recorded ---------------------------------------------


def _store_with_bento(root: Path, spec_folder: Path, spec: ServingSpec) -> tuple[Path, str, str]:
    """A BentoML store laid out as `bentoml build` leaves it (what resolve_target reads): the Bento's bento.yaml
    with its model_tag argument, and the model folder with model.onnx and slipway.json."""
    store = root / "bentoml"
    model_tag = f"tiny:v1-{spec.sha256[:12]}"
    model_dir = store / "models" / "tiny" / model_tag.split(":")[1]
    model_dir.mkdir(parents=True)
    shutil.copyfile(spec_folder / MODEL_FILE, model_dir / MODEL_FILE)
    (model_dir / SPEC_FILE).write_text(spec.model_dump_json())
    bento_dir = store / "bentos" / "tiny" / "v1-aaaa"
    bento_dir.mkdir(parents=True)
    (bento_dir / "bento.yaml").write_text(f"service: serving.service:SlipwayService\nargs:\n  model_tag: {model_tag}\n")
    return store, "tiny:v1-aaaa", model_tag


def _tamper(tmp_path: Path, other: ServingSpec) -> dict[str, tuple[Any, str]]:
    """Ways to damage a stored Bento (name -> (change, what the error must say))."""

    def garble_manifest(store: Path, model_dir: Path) -> None:
        next((store / "bentos").rglob("bento.yaml")).write_text("args: [model_tag: {\n")

    def drop_manifest(store: Path, model_dir: Path) -> None:
        next((store / "bentos").rglob("bento.yaml")).unlink()

    def garble_descriptor(store: Path, model_dir: Path) -> None:
        (model_dir / SPEC_FILE).write_text('{"format": 1, "model_name": ')

    def truncate_model(store: Path, model_dir: Path) -> None:
        data = (model_dir / MODEL_FILE).read_bytes()
        (model_dir / MODEL_FILE).write_bytes(data[: len(data) // 2])

    def swap_model_and_descriptor(store: Path, model_dir: Path) -> None:
        # A consistent pair that is not the released one: the service's own check passes, the registry's not
        (model_dir / MODEL_FILE).write_bytes((tmp_path / "other" / MODEL_FILE).read_bytes() + b"\n")
        swapped = other.model_copy(update={"sha256": file_sha256(model_dir / MODEL_FILE)})
        (model_dir / SPEC_FILE).write_text(swapped.model_dump_json())

    return {
        "bento.yaml not YAML": (garble_manifest, "is corrupt"),
        "bento.yaml missing": (drop_manifest, "is not in the BentoML store"),
        "slipway.json garbled": (garble_descriptor, "not usable"),
        "model.onnx truncated": (truncate_model, "sha256"),
        "model.onnx and slipway.json swapped for another pair": (
            swap_model_and_descriptor,
            "release recorded",
        ),
    }


def _refusals(tmp_path: Path, registry: Any, names: list[str]) -> tuple[int, list[str]]:
    """Resolve a version for deploying after each named damage to its Bento; (attempts, what was not refused)."""
    from tasks.deploy import TAG_BENTO, TAG_BENTO_MODEL, TAG_ONNX_SHA256, resolve_target
    from tasks.errors import ServingError

    spec = _tiny_regressor(tmp_path / "src")
    cases = _tamper(tmp_path, _tiny_regressor(tmp_path / "other"))
    registry.client.create_registered_model("tiny")
    registry.client.create_model_version("tiny", source=str(tmp_path / "src"))
    problems: list[str] = []
    for index, name in enumerate(names):
        tamper, expect = cases[name]
        root = tmp_path / f"case{index}"
        store, bento_tag, model_tag = _store_with_bento(root, tmp_path / "src", spec)
        model_dir = store / "models" / "tiny" / model_tag.split(":")[1]
        recorded = {TAG_BENTO: bento_tag, TAG_BENTO_MODEL: model_tag, TAG_ONNX_SHA256: spec.sha256}
        registry.tag_version("tiny", "1", recorded)
        # The untampered store resolves
        assert resolve_target.fn(registry, "tiny", "champion", store, "1").bento.tag == bento_tag
        tamper(store, model_dir)
        try:
            resolve_target.fn(registry, "tiny", "champion", store, "1")
            problems.append(f"{name}: resolved for serving")
        except ServingError as exc:
            if expect not in str(exc):
                problems.append(f"{name}: unclear error (wanted {expect!r}): {exc}")
        if (root / "serving").exists():
            problems.append(f"{name}: serving state was written")
    return len(names), problems


@pytest.mark.reliability("corrupt-bento")
def test_corrupt_bento_models_are_refused_before_serving(tmp_path: Path, registry: Any, figures: Figures) -> None:
    names = ["bento.yaml not YAML", "bento.yaml missing", "slipway.json garbled", "model.onnx truncated"]
    tried, problems = _refusals(tmp_path, registry, names)
    figures.tried = "deploy resolution (every deploy, sync and monitor redeploy) of a Bento whose " + ", ".join(names)
    figures.times = tried
    figures.add(refused_naming_the_cause=tried - len(problems), serving_state_written=0)
    assert not problems, "\n".join(problems)


@pytest.mark.reliability("artifact-hash")
def test_only_the_model_the_release_recorded_is_served(tmp_path: Path, registry: Any, figures: Figures) -> None:
    from serving.predictor import Predictor
    from tasks.deploy import TAG_BENTO_MODEL, TAG_ONNX_SHA256, resolve_target
    from tasks.errors import ServingError

    # A consistent model/descriptor pair put in place of the released one: refused against the release's hash
    tried, problems = _refusals(tmp_path, registry, ["model.onnx and slipway.json swapped for another pair"])
    spec = _tiny_regressor(tmp_path / "src")
    store, _, _ = _store_with_bento(tmp_path / "unrecorded", tmp_path / "src", spec)
    # A version whose release recorded no hash is not served
    registry.client.delete_model_version_tag("tiny", "1", TAG_ONNX_SHA256)
    tried += 1
    with pytest.raises(ServingError, match="no recorded ONNX hash"):
        resolve_target.fn(registry, "tiny", "champion", store, "1")
    # Nor a Bento that serves another model than the release recorded
    registry.tag_version("tiny", "1", {TAG_ONNX_SHA256: spec.sha256, TAG_BENTO_MODEL: "tiny:v0-000000000000"})
    tried += 1
    with pytest.raises(ServingError, match="the release recorded tiny:v0"):
        resolve_target.fn(registry, "tiny", "champion", store, "1")
    # And the service itself loads only a model.onnx that hashes to its descriptor's sha256
    tried += 1
    with pytest.raises(ModelIntegrityError, match="sha256"):
        Predictor.load(tmp_path / "src", spec.model_copy(update={"sha256": "0" * 64}))
    figures.tried = (
        "deploy resolution against the version's recorded slipway.onnx.sha256 and slipway.bento.model_tag: a "
        "consistent replacement pair, no recorded hash, another model tag; the service's own load-time hash check"
    )
    figures.times = tried
    figures.add(refused=tried - len(problems), hash_source="slipway.onnx.sha256 version tag, set by record_release")
    assert not problems, "\n".join(problems)


# --- a model whose signature does not match its data ----------------------------------------------------------


def test_signature_problems_name_missing_unexpected_and_mistyped_columns() -> None:
    import pandas as pd

    from tasks.registry import signature_problems

    frame = pd.DataFrame({"a": [1.0], "b": ["x"], "c": [3], "y": [0]})
    assert signature_problems([("a", "double"), ("b", "string"), ("c", "long")], frame, "y") == []
    problems = signature_problems([("a", "string"), ("b", "string"), ("z", "double")], frame, "y")
    assert "the signature's inputs ['z'] are not in the data" in problems
    assert "the data's columns ['c'] are not in the signature" in problems
    assert "'a' is string in the signature but float in the data" in problems


@pytest.mark.slow
@pytest.mark.reliability("signature-mismatch")
@pytest.mark.timeout(600)
def test_a_model_whose_signature_does_not_match_its_data_is_refused_before_registration(
    prefect_harness: None, home: Path, registry: Any, figures: Figures
) -> None:
    from examples.breast_cancer import build_model, load_data
    from flows.release import release
    from tasks.convert import infer_schema
    from tasks.errors import InvalidModelArtifact
    from tasks.train import log_training_run

    # Given a model trained (and signed) on columns that are named differently from the data it will be judged on
    frame = load_data()
    renamed = frame.rename(columns={"mean_radius": "radius_mean"})
    schema = infer_schema(renamed, "malignant", "classification")
    model = build_model({"max_iter": 5})
    model.steps[0][1].transformers[0] = ("num", model.steps[0][1].transformers[0][1], schema.feature_names[:-1])
    model.fit(renamed[schema.feature_names], renamed["malignant"])
    figures.tried = "`release` of a model signed with `radius_mean` against holdout data that has `mean_radius`"
    trained = log_training_run.fn(
        registry,
        model,
        schema,
        renamed,
        frame,
        frame.drop(columns="malignant").head(50),
        {},
        {},
        _lineage(),
        home / "work",
    )
    before = _registry_state(registry)
    # When it is released, then it is refused naming both columns, and nothing was registered or moved
    with pytest.raises(InvalidModelArtifact) as refused:
        release(run_id=trained.run_id)
    figures.times = 1
    message = str(refused.value)
    assert "radius_mean" in message and "mean_radius" in message and "Nothing was registered" in message
    assert _registry_state(registry) == before
    figures.add(versions_registered=0, aliases_moved=0)


def _lineage() -> dict[str, str]:
    return {"data_fingerprint": "test", "config_hash": "test", "git_commit": "none", "data_source": "python"}


def _registry_state(registry: Any) -> dict[str, Any]:
    models = registry.client.search_registered_models()
    return {
        m.name: (sorted(m.aliases.items()), len(registry.client.search_model_versions(f"name='{m.name}'")))
        for m in models
    }
