"""infra/prefect/k8s-base-job-template.json: the base job template of a Prefect Kubernetes work pool.

Its starting point is tests/infra/data/prefect-kubernetes-0.8.0-default-base-job-template.json, the output of
`prefect work-pool get-default-base-job-template --type kubernetes` with prefect 3.8.8 and prefect-kubernetes 0.8.0
(installed in a scratch environment for that; prefect-kubernetes is not a dependency of slipway).

Proves: the Prefect server's own check of a base job template accepts it (every placeholder is a declared
variable); it keeps every variable of the worker's default with its type, so the worker and the UI treat it as
theirs; rendered the way the worker renders it (Prefect's templating, the variables' defaults, a deployment's
overrides), its Job manifest is a valid batch/v1 Job in strict mode; the flow runs get slipway's image, config,
secrets by reference only, and the shared project home.

Not checked here (needs a cluster and prefect-kubernetes): a worker submitting the Job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.infra.assets import K8S_VERSIONS, PREFECT_TEMPLATE

DEFAULT = Path(__file__).parent / "data" / "prefect-kubernetes-0.8.0-default-base-job-template.json"


def template() -> dict[str, Any]:
    return json.loads(PREFECT_TEMPLATE.read_text())


def render(values: dict[str, Any]) -> dict[str, Any]:
    """The Job manifest the worker builds: job_configuration with the variables' defaults and `values` applied
    (prefect.utilities.templating.apply_values, as BaseJobConfiguration.from_template_and_values does), then the
    worker's own finishing touches: env as a list of name/value pairs, the command as args."""
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration

    base = template()
    # the worker's own choice of defaults: variables whose default is null stay unset, and their keys are dropped
    defaults = BaseJobConfiguration._get_base_config_defaults(base["variables"]["properties"])
    merged = defaults | values
    merged["env"] = defaults.get("env", {}) | values.get("env", {})
    config = apply_values(base["job_configuration"], merged)
    manifest = config["job_manifest"]
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": k, "value": v} for k, v in config["env"].items()]
    container["args"] = ["prefect", "flow-run", "execute"]
    manifest["metadata"]["generateName"] = "monitor-"
    return manifest


def test_the_prefect_server_accepts_it_as_a_kubernetes_work_pool_template():
    from prefect.server.schemas.actions import WorkPoolCreate

    pool = WorkPoolCreate(name="slipway", type="kubernetes", base_job_template=template())
    assert pool.base_job_template["job_configuration"]["job_manifest"]["kind"] == "Job"


def test_an_undeclared_placeholder_is_refused_by_that_check():
    from prefect.server.schemas.actions import WorkPoolCreate

    broken = template()
    broken["job_configuration"]["job_manifest"]["metadata"]["namespace"] = "{{ namespace_typo }}"
    with pytest.raises(ValueError, match="namespace_typo"):
        WorkPoolCreate(name="slipway", type="kubernetes", base_job_template=broken)


def test_it_keeps_every_variable_and_setting_of_the_workers_default():
    default, ours = json.loads(DEFAULT.read_text()), template()
    for name, schema in default["variables"]["properties"].items():
        kept = ours["variables"]["properties"][name]
        assert kept.get("type") == schema.get("type") and kept.get("anyOf") == schema.get("anyOf"), name
    assert ours["variables"]["definitions"] == default["variables"]["definitions"]
    assert set(default["job_configuration"]) == set(ours["job_configuration"])
    for key, value in default["job_configuration"].items():
        if key != "job_manifest":
            assert ours["job_configuration"][key] == value, key
    ours_container = ours["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    default_container = default["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert default_container.items() <= ours_container.items()  # added to, nothing taken away


def test_the_workers_default_job_is_not_strictly_valid_and_ours_is():
    # prefect-kubernetes 0.8.0 puts the Job fields `completions` and `parallelism` in the pod spec; the API server
    # drops them with a warning, strict validation refuses them. The template moves them to the Job spec.
    default_pod = json.loads(DEFAULT.read_text())["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert {"completions", "parallelism"} <= default_pod.keys()
    job = template()["job_configuration"]["job_manifest"]["spec"]
    assert (job["completions"], job["parallelism"]) == (1, 1)
    assert not {"completions", "parallelism"} & job["template"]["spec"].keys()


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "values",
    [
        {},  # the pool's defaults alone
        {"env": {"SLIPWAY__MONITOR__ACT": "false"}, "cpu_limit": "2", "finished_job_ttl": 600, "name": "monitor-run"},
    ],
    ids=["defaults", "deployment-overrides"],
)
def test_the_rendered_job_is_a_valid_kubernetes_job(values: dict[str, Any], version: str):
    kubernetes_validate.validate(render(values), version, strict=True)


def test_flow_runs_get_slipways_image_config_secret_by_reference_and_the_shared_home():
    manifest = render({})
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"].endswith("/slipway-stack:0.1.0")
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["SLIPWAY_ENV"] == "prod"
    assert env["SLIPWAY__PROJECT__HOME"] == "/var/lib/slipway"
    assert env["SLIPWAY__MLFLOW__TRACKING_URI"].startswith("http://")
    assert not any("PASSWORD" in k or ("URL" in k and "@" in v) for k, v in env.items())
    assert container["envFrom"] == [{"secretRef": {"name": "slipway-flows"}}]
    mount = container["volumeMounts"][0]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert (mount["mountPath"], volume["persistentVolumeClaim"]["claimName"]) == ("/var/lib/slipway", "slipway-home")
    assert manifest["metadata"]["namespace"] == "slipway"


def test_flow_runs_drive_the_serving_deployment_through_the_remote_target():
    # The env the Jobs get is a valid slipway config with remote serving, and what it names exists: the Service
    # URL, the Deployment and its container, the image repository, the service account the Role is bound to.
    import shlex

    from configs import load_config
    from tasks.remote import RemoteTarget, render_command
    from tests.infra.assets import k8s_object

    manifest = render({})
    pod = manifest["spec"]["template"]["spec"]
    env = {item["name"]: item["value"] for item in pod["containers"][0]["env"]}
    serving = load_config(environ=env).settings.serving
    assert serving.target == "remote" and serving.remote is not None
    remote = serving.remote
    service, deployment = k8s_object("Service"), k8s_object("Deployment")
    namespace = manifest["metadata"]["namespace"]
    assert remote.url == f"http://{service['metadata']['name']}.{namespace}.svc.cluster.local:3000"
    target = RemoteTarget(model_name="m", model_version="3", bento_tag="breast-cancer-classifier:v3-abc")
    argv = render_command(remote.deploy_command, target.values(remote.image))
    assert argv[:2] == ["sh", "-c"]
    words = shlex.split(argv[2])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    image_repo = container["image"].rsplit(":", 1)[0]
    assert f"deployment/{deployment['metadata']['name']}" in words
    assert f"{container['name']}={image_repo}:v3-abc" in words
    assert words.count(namespace) == 2 and "rollout" in words
    assert pod["serviceAccountName"] == "slipway-flows"
    binding = k8s_object("RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "slipway-flows"}]
    role = k8s_object("Role")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    patch = next(rule for rule in role["rules"] if "patch" in rule["verbs"])
    assert patch["resources"] == ["deployments"] and patch["resourceNames"] == [deployment["metadata"]["name"]]
