"""The Kubernetes manifests under infra/k8s, checked offline.

Proves: every core object (Deployment, Service, HorizontalPodAutoscaler autoscaling/v2, PodDisruptionBudget) is
valid against Kubernetes' own OpenAPI-derived JSON schemas in strict mode (unknown fields refused) for the oldest
and newest versions checked; the ServiceMonitor is valid against the prometheus-operator CRD's generated models
(pattern-checked fields, and no field the CRD does not know); the objects point at each other (selectors, ports,
scale target); the Deployment rolls with maxUnavailable 0, probes /readyz and /healthz, takes keys and the
inference-log URL only from a Secret, and sets only variables the service reads; the kustomization names every
file and the Deployment's image.

Not checked here (needs a cluster): admission (quotas, policies), the image pulling and starting, the Prometheus
Operator picking the ServiceMonitor up. The live behaviour of the container's settings, probes and /metrics is in
test_live_serving.py, on a real `bentoml serve`.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import kubernetes_validate
import pytest

from tests.infra.assets import (
    K8S,
    K8S_VERSIONS,
    REPO,
    k8s_documents,
    k8s_object,
    kustomization,
    serving_container,
)

CORE_KINDS = {
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Role",
    "RoleBinding",
}


def service_variables() -> set[str]:
    """The SLIPWAY_* variables the serving process reads, from serving/service.py's docstring (its full list)."""
    text = (REPO / "serving" / "service.py").read_text()
    listed = text.split("Environment (full list", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"SLIPWAY_[A-Z_]+", listed))


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    ("file", "kind"), [(name, doc["kind"]) for name, doc in k8s_documents() if doc["kind"] in CORE_KINDS]
)
def test_core_objects_are_valid_for_kubernetes_in_strict_mode(file: str, kind: str, version: str):
    doc = next(d for name, d in k8s_documents() if name == file and d["kind"] == kind)
    kubernetes_validate.validate(doc, version, strict=True)


def test_every_kind_under_infra_k8s_is_checked_here():
    assert {doc["kind"] for _, doc in k8s_documents()} == CORE_KINDS | {"ServiceMonitor"}


def test_the_strict_schemas_refuse_a_misspelt_field():
    # The check has teeth: a typo that kubectl's client-side defaults would drop silently is an error here.
    doc = copy.deepcopy(k8s_object("Deployment"))
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = doc["spec"]["template"]["spec"]["containers"][
        0
    ].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def _without_nones(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nones(v) for v in value]
    return value


def test_the_service_monitor_is_valid_for_the_prometheus_operator_crd():
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    doc = k8s_object("ServiceMonitor")
    model = ServiceMonitor.model_validate(doc)  # types, enums and patterns (durations, label names) of the CRD
    # The generated models ignore unknown keys: a field that does not survive the round trip is not in the CRD.
    assert _without_nones(model.model_dump(by_alias=True, exclude_none=True)) == doc


def test_the_service_monitor_check_refuses_an_unknown_field_and_a_bad_duration():
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    doc = copy.deepcopy(k8s_object("ServiceMonitor"))
    doc["spec"]["endpoints"][0]["scrapeIntervall"] = "15s"
    assert _without_nones(ServiceMonitor.model_validate(doc).model_dump(by_alias=True, exclude_none=True)) != doc
    doc = copy.deepcopy(k8s_object("ServiceMonitor"))
    doc["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(ValueError, match="interval"):
        ServiceMonitor.model_validate(doc)


def test_selectors_ports_and_targets_point_at_each_other():
    deployment, service = k8s_object("Deployment"), k8s_object("Service")
    hpa, pdb, monitor = (
        k8s_object("HorizontalPodAutoscaler"),
        k8s_object("PodDisruptionBudget"),
        k8s_object("ServiceMonitor"),
    )
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    container_ports = {p["name"]: p["containerPort"] for p in serving_container()["ports"]}
    assert container_ports == {"http": 3000}  # BentoML's Dockerfile: `bentoml serve` on 3000
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert service_ports["http"]["targetPort"] in container_ports
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports.keys()
    assert [e["path"] for e in monitor["spec"]["endpoints"]] == ["/metrics"]


def test_rolling_updates_never_take_a_ready_pod_before_its_replacement_is_ready():
    spec = k8s_object("Deployment")["spec"]
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] >= 1
    hpa, pdb = k8s_object("HorizontalPodAutoscaler")["spec"], k8s_object("PodDisruptionBudget")["spec"]
    assert hpa["minReplicas"] >= 2 and pdb["maxUnavailable"] < hpa["minReplicas"]  # a drain leaves one serving
    container = serving_container()
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # SIGTERM lets the inference log flush: the grace period covers the preStop pause and the flush
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] > 30


def test_secrets_come_only_from_a_secret_and_every_variable_is_one_the_service_reads():
    env = serving_container()["env"]
    names = [item["name"] for item in env]
    assert len(names) == len(set(names))
    assert set(names) <= service_variables(), set(names) - service_variables()
    by_name = {item["name"]: item for item in env}
    for secret in ("SLIPWAY_API_KEYS", "SLIPWAY_INFERENCE_LOG_URL"):
        assert "value" not in by_name[secret]
        assert by_name[secret]["valueFrom"]["secretKeyRef"]["name"] == "slipway-serving"
    # /metrics and the probes stay open with keys set: the default open paths are not overridden
    assert "SLIPWAY_AUTH_OPEN_PATHS" not in by_name
    for path in K8S.glob("*.yaml"):
        text = path.read_text().lower()
        assert "kind: secret" not in text, f"{path.name} carries a Secret: secrets are created in the cluster only"
        assert not re.search(r"postgres(ql)?(\+\w+)?://[^\s\"']*:[^\s\"'@]+@", text), f"a password in {path.name}"


def test_the_service_reads_every_variable_the_deployment_sets_with_a_valid_value():
    from serving.options import options_from_env

    env = {item["name"]: item["value"] for item in serving_container()["env"] if "value" in item}
    options = options_from_env(env)
    assert options.workers == int(env["SLIPWAY_WORKERS"])
    assert options.max_batch_rows == int(env["SLIPWAY_MAX_BATCH_ROWS"])
    assert options.unknown_categories == env["SLIPWAY_UNKNOWN_CATEGORIES"]
    assert options.adaptive_batching is (env["SLIPWAY_ADAPTIVE_BATCHING"] == "1")


def test_kustomization_lists_every_file_and_sets_the_deployments_image():
    kust = kustomization()
    assert sorted(kust["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    image = serving_container()["image"]
    name, tag = image.rsplit(":", 1)
    assert [entry["name"] for entry in kust["images"]] == [name]
    # the tag is a Bento tag's version (slipway tags the image with the Bento tag), the same in both files
    assert kust["images"][0]["newTag"] == tag
    assert re.fullmatch(r"v\d+-[0-9a-f]{12}-[0-9a-f]{8}", tag)
    assert name.rsplit("/", 1)[-1] == "breast-cancer-classifier"
