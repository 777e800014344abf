"""The production assets under infra/, read the way their tools read them, for the tests in this folder.

Compose interpolation (`${VAR}`, `${VAR:-default}`, `${VAR:?message}`), Grafana's variables and SQL macros, and
the metric names a PromQL expression selects are done here, each as its tool documents it, so that the tests can
run what the files say against real servers on this machine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
COMPOSE = INFRA / "compose.yaml"
ENV_EXAMPLE = INFRA / ".env.example"
PROMETHEUS = INFRA / "prometheus" / "prometheus.yml"
DASHBOARD = INFRA / "grafana" / "dashboards" / "slipway.json"
GRAFANA_PROVISIONING = INFRA / "grafana" / "provisioning"
PREFECT_TEMPLATE = INFRA / "prefect" / "k8s-base-job-template.json"
PG_INIT = INFRA / "postgres" / "init-databases.sh"

# Kubernetes versions the manifests are validated against: the oldest still maintained by most providers when
# this was written, and the newest kubernetes-validate bundles.
K8S_VERSIONS = ("1.30.0", "1.37.0")


# --- Kubernetes -------------------------------------------------------------------------------------------------


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) of every Kubernetes object under infra/k8s (the kustomization itself excluded)."""
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return found


def k8s_object(kind: str) -> dict[str, Any]:
    matches = [doc for _, doc in k8s_documents() if doc["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind} under infra/k8s, found {len(matches)}"
    return matches[0]


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def serving_container() -> dict[str, Any]:
    containers = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


# --- compose ----------------------------------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")


class MissingVariable(ValueError):
    """A `${VAR:?message}` whose variable is unset or empty: compose stops with the message."""


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation applied to every string in `value` (keys are left alone, as compose does)."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg") or ""
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if unset else str(current)
        if op in (":?", "?"):
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return str(current)
        return "" if current is None else current

    return _INTERPOLATION.sub(replace, value)


def compose_variables(document: Any) -> dict[str, str | None]:
    """Every variable a parsed compose file interpolates (comments are not): name -> '?' when some use of it is
    `${VAR:?...}` (required), else its default or None."""
    found: dict[str, str | None] = {}

    def strings(value: Any) -> Iterator[str]:
        if isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)
        elif isinstance(value, str):
            yield value

    for text in strings(document):
        for match in _INTERPOLATION.finditer(text):
            name = match.group("name")
            if not name:
                continue
            op = match.group("op")
            marker = "?" if op in (":?", "?") else (match.group("arg") if op else None)
            if found.get(name) != "?":
                found[name] = marker
    return found


def compose_raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose(env: Mapping[str, str]) -> dict[str, Any]:
    """The compose file as `docker compose config` would see it with `env` (YAML anchors merged, variables set)."""
    return interpolate(compose_raw(), env)


def env_example() -> dict[str, str]:
    """The variables infra/.env.example sets (commented-out optional ones included), name -> example value."""
    found = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(\S*)", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


# --- Grafana ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    datasource_uid: str
    datasource_type: str
    text: str  # PromQL or SQL, with Grafana's variables and macros still in it
    format: str | None


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panel_queries(board: dict[str, Any] | None = None) -> list[PanelQuery]:
    """Every query of every panel (rows' nested panels included)."""
    board = board or dashboard()

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    queries = []
    for panel in panels(board["panels"]):
        for target in panel.get("targets", []):
            source = target.get("datasource") or panel.get("datasource")
            text = target.get("expr") if source["type"] == "prometheus" else target.get("rawSql")
            queries.append(
                PanelQuery(
                    panel=panel["title"],
                    datasource_uid=source["uid"],
                    datasource_type=source["type"],
                    text=text,
                    format=target.get("format"),
                )
            )
    return queries


def promql_for_prometheus(expr: str, rate_interval: str = "1m") -> str:
    """A panel's PromQL as Grafana sends it to Prometheus ($__rate_interval is Grafana's, not Prometheus')."""
    return expr.replace("$__rate_interval", rate_interval)


def sql_for_postgres(sql: str, start: datetime, end: datetime, variables: Mapping[str, str]) -> str:
    """A panel's SQL as Grafana's PostgreSQL datasource sends it: variables set, `$__timeFilter(x)` expanded to
    `x BETWEEN '<from>' AND '<to>'` (RFC 3339, UTC)."""

    def time_filter(match: re.Match[str]) -> str:
        column = match.group(1)
        return f"{column} BETWEEN '{start:%Y-%m-%dT%H:%M:%SZ}' AND '{end:%Y-%m-%dT%H:%M:%SZ}'"

    text = _expand_balanced(sql, "$__timeFilter(", time_filter)
    for name, value in variables.items():
        text = text.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in text, f"unexpanded Grafana variable or macro left in: {text}"
    return text


def _expand_balanced(text: str, opener: str, expand: Any) -> str:
    """Replace `opener ... )` (parentheses balanced inside) by expand(match-like)."""
    out, index = [], 0
    while (start := text.find(opener, index)) >= 0:
        depth, position = 1, start + len(opener)
        while depth:
            char = text[position]
            depth += {"(": 1, ")": -1}.get(char, 0)
            position += 1
        inner = text[start + len(opener) : position - 1]
        out.append(text[index:start])
        out.append(expand(re.match(r"(?s)(.*)", inner)))
        index = position
    out.append(text[index:])
    return "".join(out)


def selected_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (every vector and matrix selector), parsed by promql-parser."""
    import promql_parser

    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                found.add(node.name)
            return
        if isinstance(node, promql_parser.MatrixSelector):
            walk(node.vector_selector)
            return
        for attribute in ("expr", "lhs", "rhs", "param", "args"):
            child = getattr(node, attribute, None)
            if isinstance(child, list):
                for item in child:
                    walk(item)
            elif child is not None:
                walk(child)

    walk(promql_parser.parse(promql_for_prometheus(expr)))
    return found


def selected_label_names(expr: str) -> set[str]:
    """Label names a PromQL expression matches on or groups by (`le` of histograms included)."""
    text = promql_for_prometheus(expr)
    names = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"", text))
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        names.update(n.strip() for n in group.split(",") if n.strip())
    return names


def legend_label_names(board: dict[str, Any] | None = None) -> set[str]:
    """Label names the panels' legends print ({{label}})."""
    board = board or dashboard()
    found: set[str] = set()

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(board["panels"]):
        for target in panel.get("targets", []):
            found.update(re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", target.get("legendFormat") or ""))
    return found


def provisioned_datasources() -> dict[str, dict[str, Any]]:
    """uid -> datasource of Grafana's provisioning files."""
    found = {}
    for path in sorted((GRAFANA_PROVISIONING / "datasources").glob("*.yaml")):
        for source in yaml.safe_load(path.read_text()).get("datasources", []):
            found[source["uid"]] = source
    return found


# --- Prometheus exposition --------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def exposed_series(text: str) -> dict[str, set[frozenset[tuple[str, str]]]]:
    """metric name -> the label sets of its samples, from a /metrics text (histograms as their _bucket/_sum/_count)."""
    found: dict[str, set[frozenset[tuple[str, str]]]] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        found.setdefault(match.group(1), set()).add(labels)
    return found
