"""Package a converted ONNX model as a BentoML model and a Bento that serves it.

BentoML reads BENTOML_HOME once per process (a cached singleton) and may report usage over the network, so
every BentoML operation runs in a child Python whose environment names the home, turns tracking off and
puts `uv` on PATH (without it `bentoml build` pip-installs uv). The Bento source is only the `serving`
package plus a generated bentofile; packages are pinned to the versions installed here and not locked, so
the build needs no network and takes seconds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import onnx
from prefect import task
from prefect.cache_policies import NO_CACHE

import serving
from serving.spec import MODEL_FILE, SPEC_FILE, ServingSpec, SpecFeature, file_sha256
from tasks.convert import EncodedCategories, encoded_categories
from tasks.errors import InvalidModelArtifact, ServingError
from tasks.types import BentoRef, FeatureSpec, ModelSchema

SERVICE_IMPORT = "serving.service:SlipwayService"
# What the Bento needs besides BentoML itself (which `bentoml build` pins on its own).
BENTO_PACKAGES = (
    "numpy",
    "onnxruntime",
    "pydantic",
    "prometheus-client",
    "sqlalchemy",
    "psycopg2-binary",
    "orjson",
    "msgspec",
)
# Runs in the child Python (BENTOML_HOME set there); kept tiny so the child imports only bentoml.
_SAVE_MODEL_SCRIPT = """
import json, shutil, sys
from pathlib import Path
import bentoml
req = json.loads(sys.argv[1])
with bentoml.models.create(req["tag"], labels=req["labels"], metadata=req["metadata"]) as model:
    shutil.copyfile(req["onnx_path"], Path(model.path) / req["model_file"])
    (Path(model.path) / req["spec_file"]).write_text(req["spec_json"], encoding="utf-8")
"""


def bentoml_name(name: str) -> str:
    """A valid BentoML tag name from a registry name: lowercase, [a-z0-9-_.], at most 63 characters."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")[:63].strip("-._")
    if not slug:
        raise ServingError(f"cannot derive a BentoML name from {name!r}: it has no ASCII letters or digits")
    return slug


def split_tag(tag: str) -> tuple[str, str]:
    """(name, version) of a `name:version` BentoML tag."""
    name, sep, version = tag.partition(":")
    if not (sep and name and version):
        raise ServingError(f"{tag!r} is not a BentoML tag of the form name:version")
    return name, version


def model_version_label(model_version: str, sha256: str) -> str:
    """`v<registry version>-<12 hex of the ONNX sha256>`, so `bentoml models list` shows the MLflow version."""
    version = re.sub(r"[^a-z0-9._-]+", "-", model_version.lower()).strip("-._")[:40] or "0"
    return f"v{version}-{sha256[:12]}"


def serving_spec(
    schema: ModelSchema,
    label_output: str,
    score_output: str,
    model_name: str,
    model_version: str,
    sha256: str,
    categories: Mapping[str, EncodedCategories] | None = None,
) -> ServingSpec:
    """The `slipway.json` descriptor of a model; `categories`: what convert.encoded_categories read off its graph."""
    categories = categories or {}
    return ServingSpec(
        model_name=model_name,
        model_version=model_version,
        task=schema.task,
        features=tuple(_spec_feature(f, categories.get(f.name)) for f in schema.features),
        classes=schema.classes,
        label_output=label_output,
        score_output=score_output,
        sha256=sha256,
    )


def _spec_feature(feature: FeatureSpec, categories: EncodedCategories | None) -> SpecFeature:
    if feature.dtype != "string" or categories is None:
        return SpecFeature(name=feature.name, dtype=feature.dtype)
    return SpecFeature(
        name=feature.name,
        dtype=feature.dtype,
        categories=categories.values,
        encodes_unknown=categories.encodes_unknown,
    )


def find_uv() -> str:
    """Path of the uv executable: the one `uv run` exports as UV, else the first on PATH."""
    uv = os.environ.get("UV")
    if uv and Path(uv).is_file():
        return uv
    found = shutil.which("uv")
    if found is None:
        raise ServingError("`uv` is not on PATH; without it `bentoml build` pip-installs uv into the environment")
    return found


def linked_bentoml_home(shared_home: Path, own_home: Path) -> Path:
    """A BentoML home of one server's own at `own_home` (created), its `bentos` and `models` stores linked to
    `shared_home`'s: everything else a server writes there (its Prometheus folder, emptied at every start) stays
    its own, so servers of the same Bentos never overwrite each other's metrics."""
    own_home.mkdir(parents=True)
    for store in ("bentos", "models"):
        (own_home / store).symlink_to(shared_home.resolve() / store, target_is_directory=True)
    return own_home


def bentoml_env(bentoml_home: Path) -> dict[str, str]:
    """Environment of a BentoML child process: its home, no usage tracking, `uv` and this venv on PATH."""
    uv = find_uv()
    # uv's folder goes last: it may also hold another Python and pip, which must not shadow this venv's.
    path_dirs = [str(Path(sys.executable).parent), os.environ.get("PATH", ""), str(Path(uv).parent)]
    env = dict(os.environ)
    env.update(
        BENTOML_HOME=str(bentoml_home.resolve()),
        BENTOML_DO_NOT_TRACK="true",
        PATH=os.pathsep.join(path_dirs),
    )
    return env


def _run_child(args: list[str], env: dict[str, str], what: str, cwd: Path | None = None, timeout_s: float = 300) -> str:
    """Run a child Python; on failure raise ServingError with its output."""
    try:
        done = subprocess.run(
            [sys.executable, *args],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServingError(f"{what} did not finish within {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        raise ServingError(f"{what} failed (exit {done.returncode}):\n{done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def stored_model_dir(bentoml_home: Path, tag: str) -> Path:
    """The folder of BentoML model `name:version` in the store at `bentoml_home`."""
    name, version = split_tag(tag)
    return bentoml_home / "models" / name / version


def _stored_spec(bentoml_home: Path, tag: str) -> ServingSpec | None:
    path = stored_model_dir(bentoml_home, tag) / SPEC_FILE
    return ServingSpec.model_validate_json(path.read_text(encoding="utf-8")) if path.is_file() else None


def check_onnx_file(path: Path) -> None:
    """Refuse a file that is not a well-formed ONNX model (truncated, corrupt, not ONNX) before it is stored."""
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except Exception as exc:  # onnx raises ValidationError, DecodeError or plain OSError
        raise InvalidModelArtifact(
            f"{path} is not a valid ONNX model ({type(exc).__name__}: {str(exc).strip()[:300]}); nothing was stored"
        ) from None


@task(name="save-bento-model", cache_policy=NO_CACHE)
def save_bento_model(
    onnx_path: Path,
    schema: ModelSchema,
    label_output: str,
    score_output: str,
    model_name: str,
    model_version: str,
    bentoml_home: Path,
) -> str:
    """Store `model.onnx` and its `slipway.json` as a BentoML model; returns the model tag (idempotent)."""
    if not onnx_path.is_file():
        raise InvalidModelArtifact(f"ONNX file {onnx_path} does not exist")
    check_onnx_file(onnx_path)
    sha256 = file_sha256(onnx_path)
    categories = encoded_categories(onnx.load(str(onnx_path)))
    spec = serving_spec(schema, label_output, score_output, model_name, model_version, sha256, categories)
    tag = f"{bentoml_name(model_name)}:{model_version_label(model_version, sha256)}"
    existing = _stored_spec(bentoml_home, tag)
    if existing is not None:
        if existing != spec:
            raise InvalidModelArtifact(f"BentoML model {tag} exists with a different descriptor: {existing}")
        return tag
    bentoml_home.mkdir(parents=True, exist_ok=True)
    request = {
        "tag": tag,
        "onnx_path": str(onnx_path.resolve()),
        "labels": {"model_name": model_name, "model_version": model_version, "task": schema.task},
        "metadata": {"sha256": sha256},
        "model_file": MODEL_FILE,
        "spec_file": SPEC_FILE,
        "spec_json": spec.model_dump_json(indent=2),
    }
    _run_child(
        ["-c", _SAVE_MODEL_SCRIPT, json.dumps(request)], bentoml_env(bentoml_home), f"saving BentoML model {tag}"
    )
    stored = stored_model_dir(bentoml_home, tag) / MODEL_FILE
    if not stored.is_file() or file_sha256(stored) != sha256:
        raise InvalidModelArtifact(f"{stored} does not match {onnx_path} (sha256 {sha256}) after saving")
    return tag


def _serving_sources() -> dict[str, bytes]:
    """The `serving` package files that go into the Bento, by relative path."""
    root = Path(serving.__file__).resolve().parent
    return {f"serving/{p.relative_to(root).as_posix()}": p.read_bytes() for p in sorted(root.rglob("*.py"))}


def bentofile(service_name: str, model_tag: str, spec: ServingSpec) -> dict[str, object]:
    """The build config: only the serving package, pinned but unlocked packages, the model tag as argument."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in BENTO_PACKAGES]
    return {
        "service": SERVICE_IMPORT,
        "name": service_name,
        "labels": {"model_tag": model_tag, "model_name": bentoml_name(spec.model_name), "owner": "slipway"},
        "include": ["serving/**/*.py"],
        "python": {"packages": pins, "lock_packages": False},
        "args": {"model_tag": model_tag},
    }


def _bento_version(model_tag: str, sources: dict[str, bytes], config: dict[str, object]) -> str:
    """Model version label plus a hash of everything that goes into the Bento: same inputs, same tag."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    digest.update(importlib.metadata.version("bentoml").encode())
    for path, content in sources.items():
        digest.update(path.encode() + b"\0" + content)
    return f"{split_tag(model_tag)[1]}-{digest.hexdigest()[:8]}"


@task(name="build-bento", cache_policy=NO_CACHE)
def build_bento(model_tag: str, service_name: str, bentoml_home: Path) -> BentoRef:
    """Build (or reuse) a Bento named after `service_name` serving `model_tag`; its source is only `serving`."""
    service_name = bentoml_name(service_name)
    spec = _stored_spec(bentoml_home, model_tag)
    if spec is None:
        raise ServingError(f"model {model_tag} is not in the BentoML model store at {bentoml_home}/models")
    sources = _serving_sources()
    config = bentofile(service_name, model_tag, spec)
    version = _bento_version(model_tag, sources, config)
    path = bentoml_home / "bentos" / service_name / version
    if (path / "bento.yaml").is_file():
        return BentoRef(tag=f"{service_name}:{version}", model_tag=model_tag, path=path)
    # The build context lives in the system temp folder: bentoml refuses a context under a hidden folder
    # ("Accessing hidden files is not allowed"), and the embedded home is `.slipway/`.
    with tempfile.TemporaryDirectory(prefix="slipway-bento-context-") as tmp:
        context = Path(tmp)
        for relative, content in sources.items():
            (context / relative).parent.mkdir(parents=True, exist_ok=True)
            (context / relative).write_bytes(content)
        # JSON is valid YAML; bentoml reads bentofile.yaml with yaml.safe_load.
        (context / "bentofile.yaml").write_text(json.dumps(config, indent=2), encoding="utf-8")
        _run_child(
            ["-m", "bentoml", "build", ".", "--version", version, "--output", "tag"],
            bentoml_env(bentoml_home),
            f"building Bento {service_name}:{version}",
            cwd=context,  # bentoml refuses a bentofile outside its working directory
        )
    if not (path / "bento.yaml").is_file():
        raise ServingError(f"`bentoml build` reported success but {path} has no bento.yaml")
    return BentoRef(tag=f"{service_name}:{version}", model_tag=model_tag, path=path)
