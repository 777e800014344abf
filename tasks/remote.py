"""Serving that slipway does not run itself (serving.target: remote): Kubernetes, compose, another host.

What it serves is read where applications reach it: `slipway_model_info{model_name,model_version}` on the
url's /metrics (the service sets it from the model it loaded). Moving it to another version is the platform's
own command (serving.remote.deploy_command, e.g. `kubectl set image`), run with the version's Bento and image
filled in; the rollout counts as done only when `settle_scrapes` scrapes in a row, each possibly answered by a
different pod, all report the new version. Latency across several pods comes from the Prometheus that scrapes
them (one pod's /metrics would judge a fraction of the traffic).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping
from typing import Literal

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE

from configs.settings import RemoteServingSettings
from tasks.deploy import released_bento
from tasks.errors import ServingError
from tasks.monitor import DEFAULT_METRICS_NAMESPACE, InferenceLogLoss, RequestHistogram
from tasks.package import split_tag
from tasks.resources import Registry
from tasks.types import Result

MODEL_INFO = "slipway_model_info"
OUTPUT_TAIL_CHARS = 2000


class RemoteView(Result):
    """What the remote service answered: readiness and the model version its /metrics reports."""

    url: str
    condition: Literal["serving", "unhealthy", "unreachable"]
    model_version: str | None
    detail: str


class RemoteTarget(Result):
    """A released version and what the deploy command is told about it."""

    model_name: str
    model_version: str
    bento_tag: str

    def values(self, image_template: str) -> dict[str, str]:
        bento_name, bento_version = split_tag(self.bento_tag)
        values = {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "bento_tag": self.bento_tag,
            "bento_name": bento_name,
            "bento_version": bento_version,
        }
        return values | {"image": image_template.format_map(values | {"image": ""})}


class RolloutResult(Result):
    argv: tuple[str, ...]
    command_s: float
    settle_s: float
    output_tail: str
    view: RemoteView


def served_versions(metrics_text: str, model_name: str) -> list[str]:
    """Versions of `model_name` that a /metrics text says are served (value 1 of slipway_model_info)."""
    from prometheus_client.parser import text_string_to_metric_families

    versions: list[str] = []
    for family in text_string_to_metric_families(metrics_text):
        if family.name != MODEL_INFO:
            continue
        for sample in family.samples:
            version = sample.labels.get("model_version")
            if sample.labels.get("model_name") == model_name and sample.value > 0 and version:
                versions.append(version)
    return sorted(set(versions))


@task(name="read-remote-serving", cache_policy=NO_CACHE)
def remote_view(
    remote: RemoteServingSettings, model_name: str, api_key: str | None = None, timeout_s: float = 5.0
) -> RemoteView:
    """Ask remote.url's /readyz and /metrics what is serving; never raises for an unreachable service."""
    url = remote.url.rstrip("/")
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(base_url=url, timeout=timeout_s, headers=headers) as client:
            ready = client.get("/readyz")
            metrics = client.get("/metrics")
    except httpx.HTTPError as exc:
        return RemoteView(url=url, condition="unreachable", model_version=None, detail=f"{url}: {exc!r}")
    versions = served_versions(metrics.text, model_name) if metrics.status_code == 200 else []
    version = versions[-1] if len(versions) == 1 else None
    if metrics.status_code != 200:
        said = f"/metrics answered {metrics.status_code}"
    elif not versions:
        said = f"/metrics reports no {MODEL_INFO} for {model_name}"
    elif len(versions) > 1:
        said = f"/metrics reports versions {', '.join(versions)} at once"
    else:
        said = f"serving {model_name} v{version}"
    if ready.status_code != 200:
        detail = f"{url}: /readyz answered {ready.status_code}; {said}"
        return RemoteView(url=url, condition="unhealthy", model_version=version, detail=detail)
    return RemoteView(url=url, condition="serving", model_version=version, detail=f"{url}: {said}")


@task(name="resolve-remote-target", cache_policy=NO_CACHE)
def remote_target(registry: Registry, model_name: str, champion_alias: str, version: str | None) -> RemoteTarget:
    """The Bento the release recorded for `version` (default: the champion). Unlike a local deploy, the Bento
    need not be in this machine's store: the platform serves the image built of it."""
    released = released_bento(registry, model_name, champion_alias, version)
    return RemoteTarget(
        model_name=model_name,
        model_version=released.version,
        bento_tag=released.bento_tag,
    )


def render_command(template: list[str], values: Mapping[str, str]) -> list[str]:
    """Each argument of the template with its {placeholders} filled in (the config checked their names)."""
    return [arg.format_map(values) for arg in template]


def _tail(text: str) -> str:
    return text[-OUTPUT_TAIL_CHARS:].strip()


@task(name="roll-out-remote", cache_policy=NO_CACHE)
def roll_out(
    remote: RemoteServingSettings, target: RemoteTarget, api_key: str | None = None, poll_s: float = 1.0
) -> RolloutResult:
    """Run the deploy command for `target`, then wait until remote.url reports its version.

    ServingError when the command fails or times out (its exit code and last output named), or when the url has
    not reported the version `settle_scrapes` times in a row by remote.rollout_timeout_s.
    """
    argv = render_command(remote.deploy_command, target.values(remote.image))
    deadline = time.monotonic() + remote.rollout_timeout_s
    start = time.monotonic()
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=remote.rollout_timeout_s, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise ServingError(f"serving.remote.deploy_command: {argv[0]!r} is not on PATH; nothing was changed") from None
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or "") if isinstance(exc.stdout, str) else ""
        raise ServingError(
            f"deploy command for v{target.model_version} did not finish in {remote.rollout_timeout_s:.0f} s "
            f"(serving.remote.rollout_timeout_s): {' '.join(argv)}\n{_tail(output)}"
        ) from None
    command_s = time.monotonic() - start
    output = _tail(f"{done.stdout}\n{done.stderr}")
    if done.returncode != 0:
        raise ServingError(
            f"deploy command for v{target.model_version} exited with {done.returncode}: {' '.join(argv)}\n{output}"
        )
    settle_start = time.monotonic()
    in_a_row = 0
    view = remote_view.fn(remote, target.model_name, api_key)
    while True:
        in_a_row = in_a_row + 1 if view.condition == "serving" and view.model_version == target.model_version else 0
        if in_a_row >= remote.settle_scrapes:
            break
        if time.monotonic() >= deadline:
            raise ServingError(
                f"deploy command for v{target.model_version} succeeded, but {remote.url} still says "
                f"{view.condition}: {view.detail} after {remote.rollout_timeout_s:.0f} s "
                "(serving.remote.rollout_timeout_s)"
            )
        time.sleep(poll_s if in_a_row == 0 else 0.2)
        view = remote_view.fn(remote, target.model_name, api_key)
    return RolloutResult(
        argv=tuple(argv),
        command_s=command_s,
        settle_s=time.monotonic() - settle_start,
        output_tail=output,
        view=view,
    )


# --- latency across pods, from Prometheus -------------------------------------------------------------------


def _prom_query(client: httpx.Client, query: str) -> list[dict[str, object]]:
    try:
        answer = client.get("/api/v1/query", params={"query": query})
    except httpx.HTTPError as exc:
        raise ServingError(f"serving.remote.prometheus_url {client.base_url}: {exc!r}") from None
    body = answer.json() if answer.headers.get("content-type", "").startswith("application/json") else {}
    if answer.status_code != 200 or body.get("status") != "success":
        raise ServingError(
            f"Prometheus at {client.base_url} refused {query!r}: {answer.status_code} {body.get('error', answer.text)}"
        )
    result = body["data"]["result"]
    return result if isinstance(result, list) else []


def _value(series: dict[str, object]) -> float:
    value = series.get("value")
    return float(value[1]) if isinstance(value, list) else 0.0


@task(name="prometheus-latency", cache_policy=NO_CACHE)
def prometheus_histogram(
    prometheus_url: str,
    window_s: float,
    selector: str = "",
    endpoint: str = "/predict",
    namespace: str = DEFAULT_METRICS_NAMESPACE,
    timeout_s: float = 10.0,
) -> RequestHistogram:
    """`endpoint`'s request-duration histogram over the last `window_s`, summed over every pod Prometheus scrapes.

    Prometheus' increase() extrapolates to the window's edges, so counts may be fractional; the quantiles and
    5xx share are what matter. ServingError when Prometheus does not answer (the monitor reports that).
    """
    name = f"{namespace}_request_duration_seconds"
    matchers = f'endpoint="{endpoint}"' + (f",{selector.strip().strip(',')}" if selector.strip() else "")
    rng = f"[{max(int(window_s), 1)}s]"
    with httpx.Client(base_url=prometheus_url.rstrip("/"), timeout=timeout_s) as client:
        buckets = _prom_query(client, f"sum by (le) (increase({name}_bucket{{{matchers}}}{rng}))")
        count = _prom_query(client, f"sum(increase({name}_count{{{matchers}}}{rng}))")
        errors = _prom_query(client, f'sum(increase({name}_count{{{matchers},http_response_code=~"5.."}}{rng}))')
        seconds = _prom_query(client, f"sum(increase({name}_sum{{{matchers}}}{rng}))")
    finite: dict[float, float] = {}
    for series in buckets:
        metric = series.get("metric")
        le = metric.get("le") if isinstance(metric, dict) else None
        if le is not None and float(le) != float("inf"):
            finite[float(le)] = _value(series)
    bounds = tuple(sorted(finite))
    return RequestHistogram(
        endpoint=endpoint,
        bounds=bounds,
        cumulative=tuple(finite[b] for b in bounds),
        count=_value(count[0]) if count else 0.0,
        errors=_value(errors[0]) if errors else 0.0,
        sum_seconds=_value(seconds[0]) if seconds else 0.0,
    )


@task(name="prometheus-log-loss", cache_policy=NO_CACHE)
def prometheus_log_loss(prometheus_url: str, selector: str = "", timeout_s: float = 10.0) -> InferenceLogLoss | None:
    """The inference-log counters summed over every pod Prometheus scrapes (each since its pod started); None
    when no pod exports them (serving logs nothing)."""
    matchers = f"{{{selector.strip().strip(',')}}}" if selector.strip() else ""
    with httpx.Client(base_url=prometheus_url.rstrip("/"), timeout=timeout_s) as client:
        written = _prom_query(client, f"sum(slipway_inference_log_rows_written_total{matchers})")
        dropped = _prom_query(client, f"sum by (reason) (slipway_inference_log_rows_dropped_total{matchers})")
        queued = _prom_query(client, f"sum(slipway_inference_log_queue_rows{matchers})")
    if not written and not dropped:
        return None
    by_reason: dict[str, int] = {}
    for series in dropped:
        metric = series.get("metric")
        reason = metric.get("reason", "unknown") if isinstance(metric, dict) else "unknown"
        by_reason[str(reason)] = round(_value(series))
    return InferenceLogLoss(
        rows_written=round(_value(written[0])) if written else 0,
        rows_dropped=sum(by_reason.values()),
        dropped_by_reason=by_reason,
        queue_rows=round(_value(queued[0])) if queued else 0,
    )
