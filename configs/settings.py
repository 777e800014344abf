"""The typed settings tree: every knob slipway has, with its default and its meaning."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

# Evidently 0.7 stattest names slipway accepts for drift (tasks/monitor.py maps each to its statistic).
NumericalMethod = Literal[
    "wasserstein",
    "ks",
    "psi",
    "jensenshannon",
    "kl_div",
    "hellinger",
    "ed",
    "t_test",
    "mannw",
    "anderson",
    "cramer_von_mises",
]
CategoricalMethod = Literal["jensenshannon", "chisquare", "z", "psi", "kl_div", "hellinger", "TVD", "g_test"]


def conflict(fields: tuple[str, ...], message: str) -> PydanticCustomError:
    """A check across fields: `fields` are their full dotted names, so the config loader can name the one a layer
    set last and the file that set it, instead of the section (or `<root>`) the validator sits on."""
    # pydantic fills only `{fields}` in the message from the context; other braces stay as they are.
    return PydanticCustomError("config_conflict", message, {"fields": fields})


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectSettings(Section):
    name: str = Field("slipway", description="Project name, used in log and report titles.")
    home: Path = Field(
        Path(".slipway"),
        description="Folder for all embedded state: MLflow SQLite and artifacts, Prefect home, "
        "BentoML home, reports, logs. Relative paths are resolved against the working directory.",
    )


class DataSettings(Section):
    """Where training data comes from: exactly one of path, query or loader."""

    kind: Literal["file", "sql", "python"] = Field(
        "python", description="file: Parquet/CSV at `path`; sql: `query` on `url`; python: `loader`."
    )
    path: Path | None = Field(None, description="Parquet or CSV file (kind=file).")
    url: str | None = Field(None, description="SQLAlchemy URL (kind=sql). Put passwords in the environment.")
    query: str | None = Field(None, description="SQL query returning one row per example (kind=sql).")
    loader: str | None = Field(None, description="`module:function` returning a pandas DataFrame (kind=python).")
    target: str = Field(..., description="Name of the label column.")
    test_size: float = Field(0.25, gt=0, lt=1, description="Holdout share for evaluation and gates.")
    random_state: int = Field(42, description="Seed for the split, so a release is reproducible.")
    reference_rows: int = Field(
        2000, gt=0, description="Rows of training inputs kept as the monitoring reference sample."
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataSettings:
        needed = {"file": ("path",), "sql": ("url", "query"), "python": ("loader",)}[self.kind]
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            needed_fields = tuple(f"data.{m}" for m in missing)
            raise conflict(("data.kind", *needed_fields), f"data.kind={self.kind!r} needs {', '.join(needed_fields)}")
        return self


class ModelSettings(Section):
    name: str = Field(..., description="Registered model name in MLflow.")
    task: Literal["classification", "regression"] = Field(..., description="What the model predicts.")
    entrypoint: str = Field(
        ...,
        description="`module:function(params: dict) -> estimator` building an unfitted scikit-learn "
        "compatible estimator (a Pipeline, XGBoost or LightGBM model).",
    )
    params: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict,
        description="Hyper-parameters passed to the entrypoint and logged to MLflow. A config layer that sets "
        "another `entrypoint` starts its params afresh (the lower layers' params were for their builder).",
    )
    expectations: str = Field(
        ..., description="Great Expectations suite file name under configs/expectations/ (or a path)."
    )

    @field_validator("entrypoint")
    @classmethod
    def _module_function(cls, value: str) -> str:
        if value.count(":") != 1 or not all(value.split(":")):
            raise ValueError("must look like 'package.module:function'")
        return value


class MlflowSettings(Section):
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI. Default: a SQLite file under project.home."
    )
    registry_uri: str | None = Field(None, description="Model registry URI. Default: the tracking URI.")
    experiment: str = Field("slipway", description="Experiment that training and release runs go to.")


class ConvertSettings(Section):
    opset: int = Field(17, ge=13, le=22, description="ONNX opset (onnxruntime 1.31 supports up to 22; 28 is refused).")
    ml_opset: int = Field(3, ge=1, le=5, description="ai.onnx.ml opset for the tree and encoder operators.")


class OptimizeSettings(Section):
    quantize: Literal["auto", "never", "always"] = Field(
        "auto",
        description="Dynamic int8 quantization: auto tries it on graphs with MatMul/Gemm (neural models) "
        "and keeps it only if it passes parity and is faster; never skips it.",
    )
    benchmark_rows: int = Field(500, gt=0, description="Single-row calls timed per candidate.")
    batch_rows: int = Field(100, gt=0, description="Rows per batch call in the throughput timing.")
    intra_op_threads: int = Field(1, ge=0, description="ORT intra-op threads (1 is stable on small machines).")


class ParityGate(Section):
    max_abs_diff_fp32: float = Field(1e-4, gt=0, description="Max |onnx - native| of probabilities/values.")
    max_abs_diff_quantized: float = Field(1e-2, gt=0, description="The same bound for int8 variants.")
    max_label_flip_rate: float = Field(0.001, ge=0, le=1, description="Share of rows whose label changes.")


class QualityGate(Section):
    metric: str = Field(
        "auto", description="roc_auc, accuracy, f1 (classification), rmse, mae, r2 (regression); auto picks."
    )
    min_improvement: float = Field(
        0.0, description="The candidate must beat the champion by at least this much (negative allows a drop)."
    )
    min_value: float | None = Field(None, description="Absolute floor for the metric, champion or not.")


class LatencyGate(Section):
    p99_ms: float = Field(5.0, gt=0, description="Budget for in-process single-row p99 latency of the ONNX model.")
    samples: int = Field(300, gt=10, description="Single-row calls timed for the gate.")


class DataGate(Section):
    enabled: bool = Field(True, description="Run the Great Expectations suite on the holdout data.")


class GateSettings(Section):
    data: DataGate = DataGate()
    parity: ParityGate = ParityGate()
    quality: QualityGate = QualityGate()
    latency: LatencyGate = LatencyGate()


class PromotionSettings(Section):
    policy: Literal["auto", "manual"] = Field(
        "auto", description="auto: a version that passes every gate becomes champion; manual: challenger only."
    )
    challenger_alias: str = Field("challenger", pattern=r"^[a-zA-Z][\w-]*$")
    champion_alias: str = Field("champion", pattern=r"^[a-zA-Z][\w-]*$")

    @model_validator(mode="after")
    def _distinct(self) -> PromotionSettings:
        if self.challenger_alias == self.champion_alias:
            raise conflict(
                ("promotion.challenger_alias", "promotion.champion_alias"),
                f"challenger_alias and champion_alias must differ (both are {self.champion_alias!r})",
            )
        return self


# Values a remote deploy command may name, e.g. ["kubectl", "set", "image", "deployment/slipway", "bento={image}"].
DEPLOY_PLACEHOLDERS = ("model_name", "model_version", "bento_tag", "bento_name", "bento_version", "image")


class RemoteServingSettings(Section):
    """Serving that slipway does not run itself: what it reaches, how it redeploys, where latency comes from.

    sync and the monitor read the version served at `url` from its /metrics (slipway_model_info) and, when the
    champion alias points elsewhere, run `deploy_command` and wait until `url` reports the new version.
    """

    url: str = Field(
        ..., pattern=r"^https?://", description="Base URL applications call (a Kubernetes Service, a load balancer)."
    )
    deploy_command: list[str] = Field(
        ...,
        min_length=1,
        description="argv run to roll serving to a version (no shell; use [sh, -c, ...] for one). Placeholders: "
        "{model_name} {model_version} {bento_tag} {bento_name} {bento_version} {image}. Example: "
        "[kubectl, -n, ml, set, image, deployment/slipway-serving, bento={image}].",
    )
    image: str = Field(
        "slipway-serving:{bento_version}",
        description="What {image} stands for: the image `slipway image` built of the Bento (the same placeholders but "
        "{image} itself).",
    )
    rollout_timeout_s: float = Field(
        900.0, gt=0, description="Longest wait for the command and then for url to report the new version."
    )
    settle_scrapes: int = Field(
        3,
        ge=1,
        description="Consecutive /metrics scrapes of url that must all report the new version (pods "
        "behind a Service answer in turn, so one scrape may reach an old pod).",
    )
    prometheus_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="Prometheus that scrapes every serving pod: the monitor's latency and 5xx rate are summed "
        "over all of them from there. Unset: from url's own /metrics (right for one pod only).",
    )
    prometheus_selector: str = Field(
        "",
        description='Extra PromQL label matchers for the serving series, e.g. job="slipway-serving".',
    )

    @field_validator("deploy_command", "image")
    @classmethod
    def _known_placeholders(cls, value: list[str] | str, info: ValidationInfo) -> list[str] | str:
        from string import Formatter

        # `image` is what {image} stands for, so it cannot name itself.
        known = [n for n in DEPLOY_PLACEHOLDERS if info.field_name != "image" or n != "image"]
        for arg in [value] if isinstance(value, str) else value:
            try:
                names = [name for _, name, _, _ in Formatter().parse(arg) if name is not None]
            except ValueError as exc:
                raise ValueError(f"{arg!r}: {exc} (write {{{{ and }}}} for literal braces)") from None
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ValueError(f"{arg!r} names {{{unknown[0]}}}; known: {', '.join(known)}")
        return value


class ServingSettings(Section):
    host: str = Field("127.0.0.1", description="Bind address; keep loopback unless a proxy fronts it.")
    port: int = Field(3000, ge=1, le=65535)
    workers: int = Field(0, ge=0, description="Serving worker processes; 0 means one per core.")
    max_batch_rows: int = Field(1000, gt=0, description="Largest batch a request may carry.")
    max_body_bytes: int = Field(1_048_576, gt=0, description="Largest request body accepted.")
    adaptive_batching: bool = Field(
        True,
        description="Predict the requests a worker parsed in the same event-loop turn with one model call (at "
        "most max_batch_rows rows); no timer, nothing shed. false: one model call per request.",
    )
    unknown_categories: Literal["refuse", "accept"] = Field(
        "refuse",
        description="A category value the model does not know (read off its ONNX encoders): refuse answers 400 "
        "naming the field and the known values; accept predicts with it where the model encodes unknown values "
        "(one-hot all zeros) and still refuses it where the model would fail.",
    )
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Bearer keys; set through SLIPWAY__SERVING__API_KEYS (JSON list), never in YAML.",
    )
    inference_log_url: str | None = Field(
        None, description="SQLAlchemy URL of the inference log. Default: a SQLite file under project.home."
    )
    inference_log_retention_days: float | None = Field(
        30.0,
        gt=0,
        description="Requests logged longer ago than this are deleted by each monitor run (and `slipway log "
        "prune`), so the log stops growing; null: keep everything. At least monitor.window_minutes.",
    )
    deploy_on_release: bool = Field(False, description="Serve the new champion when a release promotes one.")
    target: Literal["local", "remote"] = Field(
        "local",
        description="local: `slipway deploy` runs bentoml serve behind HAProxy on this machine. remote: serving "
        "runs elsewhere (Kubernetes, compose, another host), reached at serving.remote.url and redeployed by "
        "serving.remote.deploy_command; deploy, sync and the monitor then act through those.",
    )
    remote: RemoteServingSettings | None = Field(None, description="Required when target is remote.")

    @model_validator(mode="after")
    def _remote_given(self) -> ServingSettings:
        if self.target == "remote" and self.remote is None:
            raise conflict(
                ("serving.target",), "target is remote but serving.remote is not set (it needs url and deploy_command)"
            )
        return self


class DriftSettings(Section):
    """How live inputs are compared with the serving version's reference sample (Evidently 0.7 stattests)."""

    num_method: NumericalMethod = Field(
        "wasserstein", description="Evidently stattest for numeric columns (wasserstein: normed distance)."
    )
    num_threshold: float | None = Field(None, gt=0, description="None: Evidently's default for num_method (0.1).")
    cat_method: CategoricalMethod = Field("jensenshannon", description="Stattest for categorical columns.")
    cat_threshold: float | None = Field(None, gt=0, description="None: Evidently's default for cat_method (0.1).")
    drift_share: float = Field(0.5, gt=0, le=1, description="Dataset drift when this share of columns drift.")
    sample_rows: int | None = Field(
        50_000, gt=0, description="Compare a seeded sample of at most this many rows per side; null: every row."
    )
    retrain_on_prediction_drift: bool = Field(True, description="Prediction drift alone also starts a retrain.")


class SloSettings(Section):
    p99_ms: float = Field(250.0, gt=0, description="Serving p99 latency budget of /predict (as BentoML measures it).")
    error_rate: float = Field(0.01, ge=0, le=1, description="Largest share of 5xx answers.")
    min_requests: int = Field(100, ge=1, description="Fewer requests in the window: the SLO is not judged.")
    probe_requests: int = Field(
        20, ge=0, description="With no traffic since the last run, send this many one-row requests first (0: never)."
    )


class MonitorSettings(Section):
    """The scheduled monitor: window, guardrails, schedules. Actions are taken only when `act` is true."""

    window_minutes: float = Field(60.0, gt=0, description="Judge the inference-log rows of the last N minutes.")
    min_rows: int = Field(500, ge=1, description="Fewer rows in the window: 'insufficient data', no action.")
    drift: DriftSettings = DriftSettings()
    slo: SloSettings = SloSettings()
    cooldown_minutes: float = Field(60.0, ge=0, description="No new action within this time after the last one.")
    max_retrains_per_day: int = Field(2, ge=0, description="Retrains started in any 24 hours.")
    bake_window_minutes: float = Field(
        60.0, ge=0, description="An SLO breach this soon after a promotion rolls back; later it redeploys."
    )
    act: bool = Field(True, description="Carry out the decided action; false: decide, record and report only.")
    retrain: Literal["deployment", "inline"] = Field(
        "deployment",
        description="deployment: run the `train` Prefect deployment (falls back to inline when none exists); "
        "inline: run the train flow as a subflow of the monitor.",
    )
    schedule_cron: str = Field("*/15 * * * *", description="Cron of the `monitor` deployment (slipway up).")
    sync_interval_s: float = Field(60.0, gt=0, description="Interval of the `sync` deployment (registry -> serving).")


class StackSettings(Section):
    """The local service `slipway up` starts on 127.0.0.1: Prefect server, MLflow UI, the deployments process.

    profile `embedded`: Prefect on SQLite, the MLflow UI on the project's SQLite store, one process serving the
    deployments. profile `server`: the production topology without containers: `mlflow server` on a PostgreSQL
    database with proxied artifacts (clients then use http://127.0.0.1:<mlflow_port>), the Prefect server on
    another PostgreSQL database, the deployments of infra/prefect.yaml and a process worker running them.
    """

    profile: Literal["embedded", "server"] = Field(
        "embedded",
        description="embedded: SQLite stores, one deployments process. server: MLflow and Prefect servers on "
        "PostgreSQL, a process worker; the MLflow tracking URI of every client then defaults to the server.",
    )
    postgres_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/postgres",
        description="Profile server: the PostgreSQL server, as a URL without password; its database is the one "
        "connected to for creating the two below. The password comes from stack.postgres_password.",
    )
    postgres_password: SecretStr | None = Field(
        None,
        description="Password of the postgres_url user; set through SLIPWAY__STACK__POSTGRES_PASSWORD, never in "
        "YAML (unset: libpq's own ways, PGPASSWORD or ~/.pgpass, or trust authentication).",
    )
    mlflow_database: str = Field(
        "slipway_mlflow", pattern=r"^[a-z_][a-z0-9_]{0,62}$", description="Profile server: MLflow's database."
    )
    prefect_database: str = Field(
        "slipway_prefect", pattern=r"^[a-z_][a-z0-9_]{0,62}$", description="Profile server: Prefect's database."
    )
    worker_ready_timeout_s: float = Field(
        120.0, gt=0, description="Profile server: seconds the Prefect worker may take until it polls its pool."
    )
    register_timeout_s: float = Field(
        300.0, gt=0, description="Profile server: seconds `prefect deploy` of infra/prefect.yaml may take."
    )
    prefect_port: int = Field(4200, ge=1, le=65535, description="Port of the Prefect server (API and UI).")
    mlflow_port: int = Field(5000, ge=1, le=65535, description="Port of the MLflow UI (`mlflow server`).")
    mlflow_workers: int = Field(1, ge=1, description="uvicorn workers of the MLflow UI (its own default, 4, is a lot).")
    prefect_ready_timeout_s: float = Field(
        180.0, gt=0, description="Seconds the Prefect server may take to answer /api/health (a fresh DB migrates)."
    )
    mlflow_ready_timeout_s: float = Field(120.0, gt=0, description="Seconds the MLflow UI may take to answer /health.")
    deployments_ready_timeout_s: float = Field(
        120.0, gt=0, description="Seconds the deployments process may take until all its deployments poll the API."
    )
    stop_grace_s: float = Field(
        30.0, gt=0, description="`slipway down`: seconds each process gets after SIGTERM before it is killed."
    )

    @field_validator("postgres_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if parts.scheme.split("+")[0] not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        if parts.password:
            raise ValueError("must not hold a password: it goes in stack.postgres_password, from the environment")
        if not parts.hostname:
            raise ValueError("needs a host, e.g. postgresql://postgres@127.0.0.1:5432/postgres")
        return value


class Settings(Section):
    """The whole slipway configuration."""

    project: ProjectSettings = ProjectSettings()
    data: DataSettings
    model: ModelSettings
    mlflow: MlflowSettings = MlflowSettings()
    convert: ConvertSettings = ConvertSettings()
    optimize: OptimizeSettings = OptimizeSettings()
    gates: GateSettings = GateSettings()
    promotion: PromotionSettings = PromotionSettings()
    serving: ServingSettings = ServingSettings()
    monitor: MonitorSettings = MonitorSettings()
    stack: StackSettings = StackSettings()

    @model_validator(mode="after")
    def _retention_covers_the_window(self) -> Settings:
        days = self.serving.inference_log_retention_days
        if days is not None and days * 24 * 60 < self.monitor.window_minutes:
            raise conflict(
                ("serving.inference_log_retention_days", "monitor.window_minutes"),
                f"serving.inference_log_retention_days ({days:g} days) is shorter than monitor.window_minutes "
                f"({self.monitor.window_minutes:g} minutes): the monitor would judge rows the retention deletes",
            )
        return self

    # Derived locations. Properties, not fields, so that one `project.home` moves all of them.
    @property
    def home(self) -> Path:
        return self.project.home.expanduser().resolve()

    @property
    def tracking_uri(self) -> str:
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        if self.stack.profile == "server":  # the MLflow server `slipway up --profile server` runs
            return f"http://127.0.0.1:{self.stack.mlflow_port}"
        return f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def registry_uri(self) -> str:
        return self.mlflow.registry_uri or self.tracking_uri

    @property
    def artifact_root(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def bentoml_home(self) -> Path:
        return self.home / "bentoml"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def monitor_dir(self) -> Path:
        return self.home / "monitor"

    @property
    def inference_log_url(self) -> str:
        return self.serving.inference_log_url or f"sqlite:///{self.home / 'inference_log.db'}"
