"""Register model versions, move aliases all-or-nothing, and keep the promotion history."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from serving.spec import file_sha256
from tasks.errors import (
    ConversionUnsupported,
    InvalidModelArtifact,
    PromotionFailed,
    RegistryError,
    RollbackImpossible,
)
from tasks.locks import file_lock
from tasks.resources import Registry
from tasks.types import (
    AliasMove,
    BentoRef,
    GateReport,
    HistoryAction,
    HistoryEntry,
    PromotionDecision,
    RegisteredVersion,
)

# Version tags slipway writes; readable in the MLflow UI.
TAG_STATUS = "slipway.status"  # registered | rejected | released
TAG_ROLLED_BACK = "slipway.rolled_back"  # set on a version that a rollback moved away from
TAG_LINEAGE = "slipway.lineage."

NATIVE_FLAVORS = ("sklearn", "xgboost", "lightgbm")


@task(name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def register_version(registry: Registry, model_uri: str, name: str, lineage: Mapping[str, str]) -> RegisteredVersion:
    """Create a registered model version from a logged model, tagged with its lineage."""
    import mlflow

    with registry.activate():
        tags = {TAG_LINEAGE + k: str(v) for k, v in lineage.items()} | {TAG_STATUS: "registered"}
        version = mlflow.register_model(model_uri, name, tags=tags)
    return RegisteredVersion(
        name=name, version=str(version.version), run_id=str(version.run_id or ""), source=str(version.source)
    )


def resolve_model_uri(registry: Registry, run_id: str | None, model_uri: str | None) -> tuple[str, str]:
    """(model_uri, run_id) from either a run id (its logged model) or a model URI."""
    if model_uri:
        from mlflow.models import get_model_info

        with registry.activate():
            info = get_model_info(model_uri)
        return model_uri, str(info.run_id or run_id or "")
    if not run_id:
        raise RegistryError("give a run id or a model URI to release")
    import mlflow

    with registry.activate():
        models = mlflow.search_logged_models(
            experiment_ids=[registry.client.get_run(run_id).info.experiment_id],
            filter_string=f"source_run_id = '{run_id}'",
            output_format="list",
        )
    if not models:
        raise RegistryError(f"run {run_id} has no logged model")
    return models[0].model_uri, run_id


# MLflow signature column types -> the feed kind they carry (serving/features.py: numbers or strings).
_SIGNATURE_KINDS = {
    "double": "number",
    "float": "number",
    "long": "number",
    "integer": "number",
    "boolean": "number",
    "string": "string",
}


def signature_problems(signature_columns: Sequence[tuple[str, str]], frame: pd.DataFrame, target: str) -> list[str]:
    """How a model's input signature ((name, MLflow type) pairs) disagrees with the feature columns of `frame`."""
    from tasks.convert import feature_type

    features = {str(c): feature_type(frame[c].dtype, str(c)) for c in frame.columns if c != target}
    declared = dict(signature_columns)
    problems = []
    missing = [n for n in declared if n not in features]
    unexpected = [n for n in features if n not in declared]
    if missing:
        problems.append(f"the signature's inputs {missing} are not in the data")
    if unexpected:
        problems.append(f"the data's columns {unexpected} are not in the signature")
    for name, kind in declared.items():
        if name in features:
            expected = _SIGNATURE_KINDS.get(kind)
            actual = "string" if features[name] == "string" else "number"
            if expected is not None and expected != actual:
                problems.append(f"{name!r} is {kind} in the signature but {features[name]} in the data")
    return problems


@task(name="check-signature", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def check_signature(registry: Registry, model_uri: str, frame: pd.DataFrame, target: str) -> bool:
    """Refuse (InvalidModelArtifact) a model whose logged input signature does not match the evaluation data,
    before anything is registered; False when the model has no column signature to check (nothing refused)."""
    from mlflow.models import get_model_info

    with registry.activate():
        signature = get_model_info(model_uri).signature
    if signature is None or signature.inputs is None or signature.inputs.is_tensor_spec():
        return False
    columns = [(str(c.name), str(getattr(c.type, "name", c.type))) for c in signature.inputs.inputs]
    problems = signature_problems(columns, frame, target)
    if problems:
        raise InvalidModelArtifact(
            f"{model_uri}: the model's input signature does not match its evaluation data: "
            + "; ".join(problems)
            + ". Nothing was registered"
        )
    return True


@task(name="load-native-model", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def load_native_model(registry: Registry, model_uri: str) -> Any:
    """The model in its native flavor (scikit-learn API), for parity and quality checks."""
    from mlflow.models import Model

    with registry.activate():
        from mlflow.artifacts import download_artifacts

        local = download_artifacts(model_uri, dst_path=str(registry.scratch_dir("native-")))
        flavors = Model.load(local).flavors
        flavor = next((f for f in NATIVE_FLAVORS if f in flavors), None)
        if flavor is None:
            raise ConversionUnsupported(
                f"MLflow model with flavors {sorted(flavors)}", supported=[f"mlflow.{f}" for f in NATIVE_FLAVORS]
            )
        import importlib

        loader = importlib.import_module(f"mlflow.{flavor}")
        return loader.load_model(local)


# --- one registry change at a time per model ----------------------------------------------------


@contextmanager
def model_lock(
    lock_dir: Path, name: str, timeout_s: float = 3600.0, on_wait: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the exclusive lock of `name`'s registry changes (release, promote, rollback) for the block.

    A flock on <lock_dir>/<name>.lock: two releases of one model on this machine (or on a shared filesystem)
    run one after the other, so each reads the aliases the previous one left and the history stays one chain.
    The kernel drops the lock when its holder dies, so a killed release never blocks the next one. RegistryError
    after `timeout_s`, naming the holder.
    """
    path = lock_dir / f"{''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)}.lock"
    with file_lock(
        path,
        timeout_s,
        on_timeout=lambda holder: RegistryError(
            f"{name}: another release, promotion or rollback holds {path} ({holder}) for more than {timeout_s:g} s"
        ),
        on_wait=(lambda holder: on_wait(f"{name}: waiting for {holder} to finish its registry change ({path})"))
        if on_wait is not None
        else None,
    ):
        yield


# --- promotion -----------------------------------------------------------------------------------


def decide_promotion(report: GateReport, policy: str, champion_alias: str, challenger_alias: str) -> PromotionDecision:
    """challenger moves when every gate passed; champion too when the policy is auto."""
    if not report.passed:
        failed = ", ".join(c.name for c in report.failed)
        return PromotionDecision(move_challenger=False, move_champion=False, reason=f"gates failed: {failed}")
    if policy == "auto":
        return PromotionDecision(
            move_challenger=True,
            move_champion=True,
            reason=f"all {len(report.checks)} gates passed and policy is auto: {challenger_alias} and "
            f"{champion_alias} move",
        )
    return PromotionDecision(
        move_challenger=True,
        move_champion=False,
        reason=f"all gates passed; policy is manual: only {challenger_alias} moves",
    )


def _new_entry_id() -> str:
    # Sortable by time, unique across concurrent writers: no sequence counter to lose under a race.
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}"


@task(name="move-aliases", cache_policy=NO_CACHE)
def move_aliases(
    registry: Registry,
    name: str,
    targets: Mapping[str, str],
    action: HistoryAction,
    actor: str,
    reason: str,
) -> HistoryEntry:
    """Point each alias at its target version, all or nothing, and append the move to the history.

    The history entry is written as pending first; if any alias fails to move, every alias is put
    back as it was and the entry is marked aborted. A crash between the two leaves a pending entry,
    which `read_history` reconciles against the aliases themselves.
    """
    before = registry.aliases(name)
    moves = tuple(AliasMove(alias=a, from_version=before.get(a), to_version=str(v)) for a, v in targets.items())
    entry = HistoryEntry(
        id=_new_entry_id(),
        at=datetime.now(UTC),
        model_name=name,
        action=action,
        actor=actor,
        reason=reason,
        moves=moves,
        status="pending",
    )
    registry.write_history(name, entry.id, entry.model_dump(mode="json"))
    try:
        for move in moves:
            registry.set_alias(name, move.alias, move.to_version)
    except Exception as exc:
        _restore_aliases(registry, name, before, [m.alias for m in moves])
        aborted = entry.model_copy(update={"status": "aborted", "reason": f"{reason} (aborted: {exc})"})
        registry.write_history(name, entry.id, aborted.model_dump(mode="json"))
        raise PromotionFailed(
            f"moving {', '.join(f'{m.alias}->v{m.to_version}' for m in moves)} on {name} failed ({exc}); "
            f"aliases restored to {before or 'none'}"
        ) from exc
    done = entry.model_copy(update={"status": "done"})
    registry.write_history(name, entry.id, done.model_dump(mode="json"))
    return done


def _restore_aliases(registry: Registry, name: str, before: Mapping[str, str], aliases: Sequence[str]) -> None:
    for alias in aliases:
        if alias in before:
            registry.set_alias(name, alias, before[alias])
        elif alias in registry.aliases(name):
            registry.delete_alias(name, alias)


def read_history(registry: Registry, name: str) -> list[HistoryEntry]:
    """The promotion history, oldest first, with interrupted (pending) entries reconciled.

    A pending entry means the process died mid-move. If the aliases it touched still point where it
    was moving them (and no later entry moved them), it completed; if none does, it did not. If the process died
    between two alias writes, the entry keeps only the moves that happened, and says so, so the history still
    puts every alias where the registry has it.
    """
    entries = [HistoryEntry.model_validate(p) for p in registry.read_history(name)]
    current = registry.aliases(name)
    result = []
    for index, entry in enumerate(entries):
        if entry.status == "pending":
            later = {m.alias for e in entries[index + 1 :] if e.status != "aborted" for m in e.moves}
            own = [m for m in entry.moves if m.alias not in later]
            applied = [m for m in own if current.get(m.alias) == m.to_version]
            if len(applied) == len(own):
                entry = entry.model_copy(update={"status": "done"})
            elif applied:
                moved = ", ".join(f"{m.alias}->v{m.to_version}" for m in applied)
                entry = entry.model_copy(
                    update={
                        "status": "done",
                        "moves": tuple(m for m in entry.moves if m not in own or m in applied),
                        "reason": f"{entry.reason} (interrupted: only {moved} happened)",
                    }
                )
            else:
                entry = entry.model_copy(update={"status": "aborted"})
        result.append(entry)
    return result


def rollback_target(history: Sequence[HistoryEntry], champion_alias: str, current: str, bad_versions: set[str]) -> str:
    """The newest earlier champion that was not itself rolled back: two rollbacks never bounce back."""
    timeline: list[str] = []
    for entry in history:
        if entry.status != "done":
            continue
        for move in entry.moves:
            if move.alias != champion_alias:
                continue
            if not timeline and move.from_version:
                timeline.append(move.from_version)  # champion set before slipway kept history
            timeline.append(move.to_version)
    for version in reversed(timeline):
        if version != current and version not in bad_versions:
            return version
    raise RollbackImpossible(
        f"no earlier good {champion_alias} than v{current} in the history "
        f"(champions so far: {timeline or 'none'}; rolled back or rejected: {sorted(bad_versions) or 'none'})"
    )


def rolled_back_versions(registry: Registry, name: str, versions: Sequence[str]) -> set[str]:
    """Versions tagged as rolled back or rejected, which a rollback must never return to."""
    bad = set()
    for version in set(versions):
        tags = registry.version_tags(name, version)
        if TAG_ROLLED_BACK in tags or tags.get(TAG_STATUS) == "rejected":
            bad.add(version)
    return bad


@task(name="tag-version", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def tag_version(registry: Registry, name: str, version: str, tags: Mapping[str, Any]) -> None:
    """Record facts about a version (gate results, ONNX variant, Bento tag) as version tags."""
    registry.tag_version(name, version, {k: str(v) for k, v in tags.items()})


@task(name="load-champion", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def load_champion(registry: Registry, name: str, alias: str) -> tuple[str, Any] | None:
    """(version, native model) of the current champion, or None when there is none yet."""
    version = registry.aliases(name).get(alias)
    if version is None:
        return None
    return version, load_native_model.fn(registry, f"models:/{name}/{version}")


@task(name="load-holdout", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def load_holdout(registry: Registry, run_id: str) -> pd.DataFrame | None:
    """The holdout split the training run logged, or None for a model logged by hand without one."""
    from tasks.train import HOLDOUT_ARTIFACT

    path = registry.download_artifact(run_id, HOLDOUT_ARTIFACT, registry.scratch_dir("holdout-"))
    return pd.read_parquet(path) if path is not None else None


@task(name="record-gate-report", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def record_gate_report(registry: Registry, version: RegisteredVersion, report: GateReport, path: Path) -> None:
    """Store the gate report as a run artifact and its verdict as version tags."""
    uri = registry.log_artifact(version.run_id, path, f"slipway/v{version.version}") if version.run_id else str(path)
    tags = {
        "slipway.gates": "passed" if report.passed else "failed",
        "slipway.gates.failed": ",".join(c.name for c in report.failed) or "none",
        "slipway.gate_report": uri,
    }
    if not report.passed:
        tags[TAG_STATUS] = "rejected"
    registry.tag_version(version.name, version.version, tags)


@task(name="record-release", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def record_release(registry: Registry, version: RegisteredVersion, onnx_path: Path, bento: BentoRef) -> None:
    """Upload the chosen ONNX file and record its hash and the Bento tag on the version."""
    uri = registry.log_artifact(version.run_id, onnx_path, f"slipway/v{version.version}") if version.run_id else ""
    registry.tag_version(
        version.name,
        version.version,
        {
            TAG_STATUS: "released",
            "slipway.onnx.uri": uri or str(onnx_path),
            "slipway.onnx.sha256": file_sha256(onnx_path),
            "slipway.bento.tag": bento.tag,
            "slipway.bento.model_tag": bento.model_tag,
        },
    )


def champion_in_history(history: Sequence[HistoryEntry], champion_alias: str) -> str | None:
    """Where the history last put the champion alias (None when it never moved it)."""
    for entry in reversed(history):
        if entry.status != "done":
            continue
        for move in entry.moves:
            if move.alias == champion_alias:
                return move.to_version
    return None


@task(name="record-manual-move", cache_policy=NO_CACHE)
def record_manual_move(
    registry: Registry, name: str, alias: str, from_version: str | None, to_version: str, actor: str
) -> HistoryEntry:
    """Append to the history an alias move someone made outside slipway (the MLflow UI, the MLflow API).

    The alias has already moved; this only writes down that it did, so rollbacks and audits see it.
    """
    entry = HistoryEntry(
        id=_new_entry_id(),
        at=datetime.now(UTC),
        model_name=name,
        action="manual",
        actor=actor,
        reason=f"{alias} moved outside slipway (MLflow UI or API) from "
        f"{'v' + from_version if from_version else 'nothing'} to v{to_version}; recorded by sync",
        moves=(AliasMove(alias=alias, from_version=from_version, to_version=to_version),),
        status="done",
    )
    registry.write_history(name, entry.id, entry.model_dump(mode="json"))
    return entry
