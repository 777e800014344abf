"""Explicit I/O doors. Tasks reach MLflow only through `Registry`, so tests hand in a real SQLite-backed one."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.errors import RegistryError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

HISTORY_TAG_PREFIX = "slipway.history."


@dataclass
class Registry:
    """MLflow tracking and model registry at explicit URIs; no global state is touched until `activate`."""

    tracking_uri: str
    registry_uri: str
    experiment: str
    artifact_root: Path | None = None
    _client: MlflowClient | None = field(default=None, init=False, repr=False)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        # Prefect may copy task parameters; the client is rebuilt on demand.
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    @contextmanager
    def activate(self) -> Iterator[None]:
        """Point MLflow's fluent API (log_model, start_run) at this registry for the block."""
        import mlflow

        previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous[0])
            mlflow.set_registry_uri(previous[1])

    def experiment_id(self) -> str:
        """The experiment's id, created (with artifacts under artifact_root) if missing."""
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        # A tracking server decides where artifacts go (proxied: mlflow-artifacts:/, uploaded over HTTP); a file
        # location from here would make every client write to this machine's disk instead.
        remote = self.tracking_uri.startswith(("http://", "https://"))
        location = self.artifact_root.resolve().as_uri() if self.artifact_root and not remote else None
        return str(self.client.create_experiment(self.experiment, artifact_location=location))

    # --- model versions -------------------------------------------------------------------------
    def version(self, name: str, version: str) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(name, str(version))
        except MlflowException as exc:
            raise RegistryError(f"model {name!r} has no version {version}: {exc.message}") from None

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        return dict(self.version(name, version).tags)

    def tag_version(self, name: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, str(value))

    def model_exists(self, name: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException as exc:
            if _missing(exc):
                return False
            raise
        return True

    # --- aliases --------------------------------------------------------------------------------
    def aliases(self, name: str) -> dict[str, str]:
        """alias -> version for a registered model ({} when the model does not exist yet)."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(name)
        except MlflowException as exc:
            if _missing(exc):
                return {}
            raise  # an unreachable server is not "no champion": a gate would then skip the comparison
        return {alias: str(version) for alias, version in model.aliases.items()}

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, str(version))

    def delete_alias(self, name: str, alias: str) -> None:
        self.client.delete_registered_model_alias(name, alias)

    # --- promotion history (registered-model tags, so it lives and travels with the registry) --
    def write_history(self, name: str, entry_id: str, payload: dict[str, Any]) -> None:
        self.client.set_registered_model_tag(name, HISTORY_TAG_PREFIX + entry_id, json.dumps(payload))

    def read_history(self, name: str) -> list[dict[str, Any]]:
        """History payloads, oldest first (entry ids sort by time)."""
        from mlflow.exceptions import MlflowException

        try:
            tags = self.client.get_registered_model(name).tags
        except MlflowException as exc:
            if _missing(exc):
                return []
            raise
        keys = sorted(k for k in tags if k.startswith(HISTORY_TAG_PREFIX))
        return [json.loads(tags[k]) for k in keys]

    # --- artifacts ------------------------------------------------------------------------------
    def log_artifact(self, run_id: str, path: Path, artifact_path: str) -> str:
        """Upload a file to a run; returns its artifact URI."""
        self.client.log_artifact(run_id, str(path), artifact_path)
        run = self.client.get_run(run_id)
        return f"{run.info.artifact_uri}/{artifact_path}/{Path(path).name}"

    def download_artifact(self, run_id: str, artifact_path: str, dst: Path) -> Path | None:
        """Download a run artifact, or None when the run does not have it."""
        from mlflow.exceptions import MlflowException

        dst.mkdir(parents=True, exist_ok=True)
        try:
            return Path(self.client.download_artifacts(run_id, artifact_path, str(dst)))
        except (MlflowException, OSError):
            return None

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[str]:
        return [a.path for a in self.client.list_artifacts(run_id, path)]

    def scratch_dir(self, prefix: str) -> Path:
        """A fresh local folder for downloads and intermediate files."""
        base = (self.artifact_root.parent / "tmp") if self.artifact_root else None
        if base is not None:
            base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def _missing(exc: Exception) -> bool:
    """True when MLflow says the object does not exist (as opposed to failing to answer)."""
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def registry_from_settings(settings: Any) -> Registry:
    """The Registry a Settings tree describes (embedded SQLite by default)."""
    settings.home.mkdir(parents=True, exist_ok=True)
    return Registry(
        tracking_uri=settings.tracking_uri,
        registry_uri=settings.registry_uri,
        experiment=settings.mlflow.experiment,
        artifact_root=settings.artifact_root,
    )
