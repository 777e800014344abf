"""Domain exceptions. Each carries the numbers or names a person needs to act on it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.types import GateReport


class SlipwayError(Exception):
    """Base for every error slipway raises on purpose."""


class DataSourceError(SlipwayError):
    """Training or evaluation data could not be loaded or does not have the expected shape."""


class ModelBuildError(SlipwayError):
    """The configured entrypoint refused its params (model.params) or could not build an estimator."""


class ConversionUnsupported(SlipwayError):
    """The estimator (or a step of a pipeline) has no ONNX converter."""

    def __init__(self, estimator: str, supported: Iterable[str], detail: str = "") -> None:
        self.estimator = estimator
        self.supported = tuple(supported)
        msg = (
            f"cannot convert {estimator} to ONNX"
            + (f": {detail}" if detail else "")
            + f". Supported: {', '.join(self.supported)}"
        )
        super().__init__(msg)


class InvalidModelArtifact(SlipwayError):
    """An ONNX file or Bento model is corrupt, truncated or does not match its recorded hash/signature."""


class GateFailed(SlipwayError):
    """One or more release gates failed; the message lists each failed check with its numbers."""

    def __init__(self, report: GateReport, report_path: str | None = None) -> None:
        self.report = report
        self.report_path = report_path
        lines = [c.line() for c in report.failed]
        where = f" (report: {report_path})" if report_path else ""
        super().__init__(
            f"{report.model_name} v{report.version} rejected by {len(lines)} gate(s){where}:\n  " + "\n  ".join(lines)
        )


class RegistryError(SlipwayError):
    """The model registry refused or failed an operation."""


class PromotionFailed(RegistryError):
    """An alias move failed; the registry was restored to its state before the move."""


class RollbackImpossible(RegistryError):
    """There is no earlier good champion to roll back to."""


class ServingError(SlipwayError):
    """Building, starting or reaching the serving endpoint failed."""


class EngineUnavailable(ServingError):
    """No container engine is reachable (for image builds): where it was looked for, why it failed, what is left."""

    def __init__(self, address: str, reason: str, dockerfile: str = "", build_command: str = "") -> None:
        self.address = address
        self.reason = reason
        self.dockerfile = dockerfile
        msg = (
            f"no Docker engine reachable at {address}: {reason}. "
            "Install and start Docker, or set DOCKER_HOST to an engine that runs"
        )
        if dockerfile:
            msg += f"; the Dockerfile is at {dockerfile}"
            msg += f" (`{build_command}` builds it where Docker runs)" if build_command else ""
        super().__init__(msg)


class ImageBuildFailed(ServingError):
    """The container engine refused or failed an image build; the message carries its last lines of output."""


class FrontUnavailable(ServingError):
    """HAProxy is missing, cannot bind the serving address, or refused a new configuration."""


class BackendNotReady(ServingError):
    """A new `bentoml serve` exited or did not become ready; whatever served before still serves."""


class MonitorStateError(SlipwayError):
    """The monitor's own state file is unreadable; the message names the file and how to reset it."""


class InferenceLogUnavailable(SlipwayError):
    """The inference log's store did not answer, so what serving saw cannot be judged; the message names the store."""
