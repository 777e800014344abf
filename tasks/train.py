"""Load training data, fit the configured estimator, evaluate it on the holdout and log it all to MLflow."""

from __future__ import annotations

import hashlib
import importlib
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from configs.settings import DataSettings
from tasks.errors import DataSourceError, ModelBuildError
from tasks.resources import Registry
from tasks.types import ModelSchema, TrainedModel

HOLDOUT_ARTIFACT = "slipway/holdout.parquet"
REFERENCE_ARTIFACT = "slipway/reference.parquet"
MODEL_ARTIFACT_NAME = "model"


def import_entrypoint(spec: str) -> Callable[..., Any]:
    """Resolve a `module:function` string to the function, with an error naming what is missing."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DataSourceError(f"cannot import module {module_name!r} of entrypoint {spec!r}: {exc}") from None
    func = getattr(module, attr, None)
    if not callable(func):
        raise DataSourceError(f"{module_name!r} has no function {attr!r} (entrypoint {spec!r})")
    return func


@task(name="load-data", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=3)
def load_training_data(data: DataSettings) -> pd.DataFrame:
    """Read the configured data source into a DataFrame and check that the target column is there."""
    if data.kind == "file":
        assert data.path is not None
        if not data.path.exists():
            raise DataSourceError(f"data.path {data.path} does not exist")
        frame = pd.read_parquet(data.path) if data.path.suffix in {".parquet", ".pq"} else pd.read_csv(data.path)
    elif data.kind == "sql":
        import sqlalchemy

        engine = sqlalchemy.create_engine(str(data.url))
        try:
            with engine.connect() as conn:
                frame = pd.read_sql_query(sqlalchemy.text(str(data.query)), conn)
        finally:
            engine.dispose()
    else:
        frame = import_entrypoint(str(data.loader))()
        if not isinstance(frame, pd.DataFrame):
            raise DataSourceError(f"loader {data.loader} returned {type(frame).__name__}, not a pandas DataFrame")
    if data.target not in frame.columns:
        raise DataSourceError(f"target column {data.target!r} not in data columns {list(frame.columns)}")
    if frame.empty:
        raise DataSourceError("the data source returned no rows")
    return frame


def data_fingerprint(frame: pd.DataFrame) -> str:
    """A content hash of the data (values, column names and dtypes), so a release names what it was trained on."""
    digest = hashlib.sha256()
    digest.update(repr([(c, str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
    return digest.hexdigest()[:16]


def split_data(
    frame: pd.DataFrame, target: str, test_size: float, random_state: int, stratify: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train/holdout split, stratified by the target for classifiers."""
    from sklearn.model_selection import train_test_split

    train, holdout = train_test_split(
        frame, test_size=test_size, random_state=random_state, stratify=frame[target] if stratify else None
    )
    return train.reset_index(drop=True), holdout.reset_index(drop=True)


def reference_sample(train: pd.DataFrame, target: str, rows: int, random_state: int) -> pd.DataFrame:
    """Training inputs that monitoring compares live traffic against."""
    inputs = train.drop(columns=[target])
    return inputs.sample(n=min(rows, len(inputs)), random_state=random_state).reset_index(drop=True)


@task(name="fit", cache_policy=NO_CACHE)
def fit_model(entrypoint: str, params: dict[str, Any], train: pd.DataFrame, target: str) -> Any:
    """Build the estimator through the configured entrypoint and fit it on the training split."""
    try:
        estimator = import_entrypoint(entrypoint)(dict(params))
    except (TypeError, ValueError) as exc:
        raise ModelBuildError(f"model.params {dict(params)} for entrypoint {entrypoint}: {exc}") from exc
    return estimator.fit(train.drop(columns=[target]), train[target])


def source_commit(path: Path) -> str | None:
    """The git commit of the code that trained the model, when it runs from a checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _pip_requirements(model: Any) -> list[str]:
    # Explicit requirements: MLflow's inference runs the model in a subprocess and costs ~7 s a log.
    import importlib.metadata as md

    names = ["scikit-learn", "skops"]
    module = (
        type(model).__module__ + " " + " ".join(type(s).__module__ for s in getattr(model, "named_steps", {}).values())
    )
    names += [pkg for pkg, mod in (("xgboost-cpu", "xgboost"), ("lightgbm", "lightgbm")) if mod in module]
    return [f"{n}=={md.version(n)}" for n in names]


@task(name="log-training-run", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=3)
def log_training_run(
    registry: Registry,
    model: Any,
    schema: ModelSchema,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    reference: pd.DataFrame,
    params: dict[str, Any],
    metrics: dict[str, float],
    lineage: dict[str, str],
    workdir: Path,
) -> TrainedModel:
    """One MLflow run with params, holdout metrics, the model (signature + example), data lineage and samples."""
    import mlflow
    import mlflow.data.pandas_dataset
    import mlflow.sklearn
    import skops.io
    from mlflow.models import infer_signature

    # MLflow hints, for each integer column it infers (here the target and the predicted labels), that an integer
    # column cannot hold a missing value at inference time. Not so for slipway: its service refuses a missing
    # value with a 400 whatever the column's type, so the hint is noise in every training log. Ignored by
    # message, for MLflow's modules only (filterwarnings replaces an identical filter, so once per run).
    warnings.filterwarnings(
        "ignore", message="Hint: Inferred schema contains integer column", category=UserWarning, module="mlflow"
    )
    inputs = train[schema.feature_names]
    signature = infer_signature(inputs.head(100), model.predict(inputs.head(100)))
    # skops refuses types it has not been told to trust; we trust exactly the types of the model we just fitted.
    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    workdir.mkdir(parents=True, exist_ok=True)
    holdout_path, reference_path = workdir / "holdout.parquet", workdir / "reference.parquet"
    holdout.to_parquet(holdout_path, index=False)
    reference.to_parquet(reference_path, index=False)

    with registry.activate():
        experiment_id = registry.experiment_id()
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{schema.target}") as run:
            mlflow.log_params(params)
            mlflow.log_metrics(metrics)
            mlflow.set_tags({f"slipway.lineage.{k}": v for k, v in lineage.items()})
            mlflow.log_input(
                mlflow.data.pandas_dataset.from_pandas(
                    train, name="train", targets=schema.target, digest=lineage["data_fingerprint"]
                ),
                context="training",
            )
            mlflow.log_input(
                mlflow.data.pandas_dataset.from_pandas(holdout, name="holdout", targets=schema.target), context="eval"
            )
            info = mlflow.sklearn.log_model(
                model,
                name=MODEL_ARTIFACT_NAME,
                signature=signature,
                input_example=inputs.head(3),
                skops_trusted_types=trusted,
                pip_requirements=_pip_requirements(model),
            )
            mlflow.log_artifact(str(holdout_path), "slipway")
            mlflow.log_artifact(str(reference_path), "slipway")
            mlflow.log_dict(schema.model_dump(mode="json"), "slipway/schema.json")
    return TrainedModel(
        run_id=run.info.run_id,
        model_uri=info.model_uri,
        metrics=metrics,
        data_fingerprint=lineage["data_fingerprint"],
    )
