"""infra/compose.yaml, its .env.example, the Prometheus config and Grafana's provisioning, checked offline.

Proves: the compose file is valid against the Compose Specification's JSON schema (the copy check-jsonschema
vendors, with its license) as written and once interpolated; every required secret is a `${VAR:?...}` that the
example env file names and no password is written in it; every published port binds to 127.0.0.1 unless
SLIPWAY_BIND says otherwise; the services the stack needs are there and reach each other by name; promtool accepts
the Prometheus config and it scrapes the serving service's /metrics; Grafana's datasources and dashboard provider
point at what compose mounts.

Not checked here (needs a Docker engine): pulling and building the images, starting the containers. The MLflow
server's settings, the PostgreSQL init script and the Grafana SQL run for real in test_monitor_panels.py; the
serving image's settings and /metrics in test_live_serving.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib.resources import files
from typing import Any

import jsonschema
import pytest
import yaml

from tests.infra.assets import (
    ENV_EXAMPLE,
    GRAFANA_PROVISIONING,
    INFRA,
    PROMETHEUS,
    MissingVariable,
    compose,
    compose_raw,
    compose_variables,
    env_example,
    provisioned_datasources,
)

SERVICES = {
    "postgres",
    "mlflow",
    "prefect-server",
    "prefect-deploy",
    "prefect-worker",
    "serving",
    "prometheus",
    "grafana",
}
SECRETS = {
    "POSTGRES_PASSWORD",
    "MLFLOW_DB_PASSWORD",
    "PREFECT_DB_PASSWORD",
    "INFERENCE_LOG_DB_PASSWORD",
    "GRAFANA_DB_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
}


def filled_env() -> dict[str, str]:
    """What a filled-in infra/.env holds: every required value set."""
    return {name: f"test-{name.lower()}" for name in SECRETS} | {"SLIPWAY_IMAGE": "breast-cancer-classifier:v1-abc"}


def compose_schema() -> dict[str, Any]:
    vendor = files("check_jsonschema.builtin_schemas.vendor")
    assert (vendor / "licenses" / "LICENSE.compose-spec").is_file()  # Apache-2.0, the compose-spec project's
    return json.loads((vendor / "compose-spec.json").read_text())


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema, format_checker=jsonschema.FormatChecker())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_is_valid_against_the_compose_specification_as_written_and_interpolated():
    assert schema_errors(compose_raw()) == []
    assert schema_errors(compose(filled_env())) == []


def test_the_schema_check_refuses_what_compose_refuses():
    broken = compose(filled_env())
    broken["services"]["mlflow"]["depends_on"]["postgres"]["condition"] = "service_started_eventually"
    broken["services"]["grafana"]["stop_grace_period"] = ["30s"]
    errors = schema_errors(broken)
    assert any("depends_on" in e for e in errors) and any("stop_grace_period" in e for e in errors)


def test_the_stack_has_every_part_and_no_unknown_one():
    assert set(compose_raw()["services"]) == SERVICES


def test_every_secret_is_required_from_the_environment_and_none_is_written_down():
    variables = compose_variables(compose_raw())
    for name in SECRETS | {"SLIPWAY_IMAGE"}:
        assert variables.get(name) == "?", f"{name} must be ${{{name}:?...}} in compose.yaml"
    example = env_example()
    assert set(variables) <= set(example), f"not in .env.example: {set(variables) - set(example)}"
    assert all(example[name] == "" for name in SECRETS), ".env.example must not carry a password"
    # a missing secret stops compose before anything starts
    for name in SECRETS:
        with pytest.raises(MissingVariable, match=name):
            compose({k: v for k, v in filled_env().items() if k != name})
    # every secret-looking setting is one whole ${...} reference, and every URL's password is one
    for name, service in compose_raw()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|API_KEYS|TOKEN", key):
                assert re.fullmatch(r"\$\{[A-Z_]+(:[-?][^}]*)?\}", str(value)), f"{name}.{key} is written down"
            for password in re.findall(r"://[^/\s:@]+:([^@\s]+)@", str(value)):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", password), f"{name}.{key}: a password in a URL"
    assert ".env" in (INFRA.parent / ".gitignore").read_text().replace("infra/.env", ".env")


def test_published_ports_bind_to_loopback_by_default():
    config = compose(filled_env())
    published = {name: service.get("ports", []) for name, service in config["services"].items()}
    assert {name for name, ports in published.items() if ports} == {
        "mlflow",
        "prefect-server",
        "serving",
        "prometheus",
        "grafana",
    }
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"
    moved = compose(filled_env() | {"SLIPWAY_BIND": "0.0.0.0"})
    assert moved["services"]["serving"]["ports"] == ["0.0.0.0:3000:3000"]


def test_the_services_reach_each_other_by_name_with_the_settings_slipway_reads():
    services = compose(filled_env())["services"]
    worker = services["prefect-worker"]["environment"]
    assert worker["SLIPWAY__MLFLOW__TRACKING_URI"] == "http://mlflow:5000"
    assert worker["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert (
        worker["SLIPWAY__SERVING__INFERENCE_LOG_URL"] == services["serving"]["environment"]["SLIPWAY_INFERENCE_LOG_URL"]
    )
    assert worker["SLIPWAY__SERVING__INFERENCE_LOG_URL"].startswith("postgresql+psycopg2://inference_log:")
    assert "@postgres:5432/inference_log" in worker["SLIPWAY__SERVING__INFERENCE_LOG_URL"]
    mlflow = services["mlflow"]["environment"]
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:5432/mlflow")
    assert "--serve-artifacts" in services["mlflow"]["command"] and mlflow["MLFLOW_ARTIFACTS_DESTINATION"]
    prefect = services["prefect-server"]["environment"]
    assert (prefect["PREFECT_SERVER_DATABASE_DRIVER"], prefect["PREFECT_SERVER_DATABASE_HOST"]) == (
        "postgresql+asyncpg",
        "postgres",
    )
    # The worker's pool is the one infra/prefect.yaml's deployments name.
    pools = {d["work_pool"]["name"] for d in yaml.safe_load((INFRA / "prefect.yaml").read_text())["deployments"]}
    assert services["prefect-worker"]["command"][services["prefect-worker"]["command"].index("--pool") + 1] in pools
    assert "--prefect-file infra/prefect.yaml" in " ".join(services["prefect-deploy"]["command"])
    # The serving image is the variable slipway image's tag goes into
    assert services["serving"]["image"] == filled_env()["SLIPWAY_IMAGE"]
    assert services["serving"]["environment"]["SLIPWAY_WORKERS"] == "2"


def test_the_postgres_init_script_is_mounted_and_gets_every_password_it_requires():
    postgres = compose(filled_env())["services"]["postgres"]
    assert "./postgres/init-databases.sh:/docker-entrypoint-initdb.d/10-slipway.sh:ro" in postgres["volumes"]
    required = set(re.findall(r"\$\{([A-Z_]+):\?", (INFRA / "postgres" / "init-databases.sh").read_text()))
    assert required <= set(postgres["environment"])


def test_prometheus_config_is_accepted_by_promtool_and_scrapes_the_serving_metrics():
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: `make install` installs Debian's prometheus package"
    checked = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(PROMETHEUS)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load(PROMETHEUS.read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "slipway-serving")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == ["serving:3000"]
    mounted = compose(filled_env())["services"]["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounted


def test_grafana_provisioning_points_at_the_mounted_dashboards_and_the_composed_services():
    grafana = compose(filled_env())["services"]["grafana"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    mount = next(v for v in grafana["volumes"] if v.startswith("./grafana/dashboards:"))
    provider = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "slipway.yaml").read_text())["providers"][0]
    assert provider["options"]["path"] == mount.split(":")[1]
    sources = provisioned_datasources()
    assert sources["slipway-prometheus"]["url"] == "http://prometheus:9090"
    mlflow = sources["slipway-mlflow"]
    assert (mlflow["url"], mlflow["jsonData"]["database"]) == ("postgres:5432", "mlflow")
    # the password reaches Grafana from its environment, which compose fills from infra/.env
    assert mlflow["secureJsonData"]["password"] == "$GRAFANA_DB_PASSWORD"
    assert "GRAFANA_DB_PASSWORD" in grafana["environment"]
    assert ENV_EXAMPLE.is_file()
