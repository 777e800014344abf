"""infra/grafana/dashboards/slipway.json, checked offline.

Proves: the dashboard loads as Grafana's JSON model; every panel queries a provisioned datasource of the right
type; every PromQL query parses and selects only the serving metrics listed in SERVING_METRICS (that each of those
is really exported, with the labels the queries use, is proved on a live `bentoml serve` in
test_live_serving.py, where a real Prometheus also evaluates every query); the SQL panels read only MLflow's
tables and the metric and tags the monitor flow really logs (tasks/observe.log_monitor_run); every topic the
dashboard is for has a panel.

Drift share and actions are not Prometheus metrics: the monitor flow records them as MLflow runs (and Prefect
events), so those panels read MLflow's PostgreSQL tables (test_monitor_panels.py runs them on real data).
"""

from __future__ import annotations

import re

import yaml

from tests.infra.assets import REPO, dashboard, panel_queries, provisioned_datasources, selected_metrics

# What the Bento service's /metrics exports (BentoML's request metrics, slipway's counters and gauges).
SERVING_METRICS = {
    "bentoml_service_request_total",
    "bentoml_service_request_duration_seconds_bucket",
    "bentoml_service_request_in_progress",
    "slipway_model_info",
    "slipway_errors_total",
    "slipway_prediction_rows_total",
    "slipway_inference_log_rows_written_total",
    "slipway_inference_log_rows_dropped_total",
    "slipway_inference_log_queue_rows",
    "slipway_predict_batch_requests_sum",
    "slipway_predict_batch_requests_count",
}
MLFLOW_TABLES = {"metrics", "runs", "experiments", "tags"}


def test_dashboard_loads_as_a_grafana_dashboard():
    board = dashboard()
    assert board["uid"] == "slipway-serving" and board["title"] == "slipway"
    assert isinstance(board["schemaVersion"], int) and board["panels"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_query_goes_to_a_provisioned_datasource_of_its_type():
    sources = provisioned_datasources()
    queries = panel_queries()
    assert queries
    for query in queries:
        source = sources[query.datasource_uid]
        assert source["type"] == query.datasource_type, query.panel
        assert query.text, f"{query.panel}: empty query"


def test_promql_queries_parse_and_select_only_serving_metrics():
    selected: set[str] = set()
    for query in panel_queries():
        if query.datasource_type == "prometheus":
            names = selected_metrics(query.text)
            assert names, f"{query.panel}: selects no metric"
            selected |= names
    assert selected <= SERVING_METRICS, selected - SERVING_METRICS
    assert selected == SERVING_METRICS  # and every exported serving metric is on the dashboard


def test_sql_queries_read_only_mlflow_tables_and_what_the_monitor_logs():
    observe = (REPO / "tasks" / "observe.py").read_text()
    logged = observe.split("def log_monitor_run", 1)[1].split("\ndef ", 1)[0]
    for query in panel_queries():
        if query.datasource_type == "prometheus":
            continue
        sql = query.text
        assert re.match(r"(?is)^\s*select\b", sql) and ";" not in sql, f"{query.panel}: one SELECT only"
        tables = set(re.findall(r"(?i)\b(?:from|join)\s+([a-z_]+)", sql))
        assert tables <= MLFLOW_TABLES, f"{query.panel}: {tables - MLFLOW_TABLES}"
        for key in re.findall(r"key\s*=\s*'([^']+)'", sql):
            assert f'"{key}"' in logged, f"{query.panel}: the monitor never logs {key!r}"
        assert "$__timeFilter(" in sql and "${experiment}-monitor" in sql


def test_every_topic_has_a_panel():
    by_metric: dict[str, list[str]] = {}
    for query in panel_queries():
        if query.datasource_type == "prometheus":
            for name in selected_metrics(query.text):
                by_metric.setdefault(name, []).append(query.text)
    latency = " ".join(by_metric["bentoml_service_request_duration_seconds_bucket"])
    assert "histogram_quantile(0.5," in latency and "histogram_quantile(0.99," in latency
    assert any('code=~"5.."' in q for q in by_metric["bentoml_service_request_total"])  # error rate
    assert any("rate(bentoml_service_request_total" in q for q in by_metric["bentoml_service_request_total"])
    for name in (
        "slipway_model_info",
        "slipway_inference_log_rows_written_total",
        "slipway_inference_log_rows_dropped_total",
        "slipway_predict_batch_requests_sum",
        "slipway_predict_batch_requests_count",
    ):
        assert name in by_metric
    sql = " ".join(q.text for q in panel_queries() if q.datasource_type != "prometheus")
    assert "'drift_share'" in sql and "'slipway.action'" in sql


def test_the_experiment_variable_defaults_to_the_configured_experiment():
    base = yaml.safe_load((REPO / "configs" / "base.yaml").read_text())
    variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "experiment")
    assert variable["query"] == variable["current"]["value"] == base["mlflow"]["experiment"]
