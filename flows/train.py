"""The train flow: load and check data, fit, evaluate on the holdout, log to MLflow, then release."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.context import open_context
from flows.release import release
from tasks import convert, train, validate
from tasks.errors import DataSourceError
from tasks.types import ReleaseSummary, TrainedModel


@flow(name="train", log_prints=True)
def train_flow(
    env: str | None = None, config_file: str | None = None, release_after: bool = True
) -> ReleaseSummary | TrainedModel:
    """Train the configured model on the configured data and (by default) release it as a subflow."""
    log = get_run_logger()
    ctx = open_context(env, config_file)
    s = ctx.settings

    frame = train.load_training_data(s.data)
    if s.gates.data.enabled:
        check = validate.validate_data(validate.load_suite(ctx.loaded.expectations_path()), frame)
        if not check.passed:
            raise DataSourceError(f"training data failed its expectations: {check.line()}")
    train_split, holdout = train.split_data(
        frame, s.data.target, s.data.test_size, s.data.random_state, stratify=s.model.task == "classification"
    )
    model = train.fit_model(s.model.entrypoint, s.model.params, train_split, s.data.target)
    schema = convert.infer_schema(train_split, s.data.target, s.model.task, getattr(model, "classes_", None))
    metrics = validate.evaluate_holdout(model, holdout, schema)
    log.info("holdout metrics: %s", ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    lineage = {
        "data_fingerprint": train.data_fingerprint(frame),
        "config_hash": ctx.loaded.settings_hash(),
        "git_commit": train.source_commit(ctx.loaded.config_dir) or "none",
        "data_source": s.data.kind,
    }
    trained = train.log_training_run(
        ctx.registry,
        model,
        schema,
        train_split,
        holdout,
        train.reference_sample(train_split, s.data.target, s.data.reference_rows, s.data.random_state),
        dict(s.model.params),
        metrics,
        lineage,
        ctx.registry.scratch_dir("train-"),
    )
    log.info("logged run %s (%s)", trained.run_id, trained.model_uri)
    if not release_after:
        return trained
    return release(run_id=trained.run_id, env=env, config_file=config_file)
