"""The service's environment knobs, the key check and the guard's place in BentoML's middleware, in-process
(the live behaviour is in test_service_guard).

Proves: keys parse from a comma list or a JSON list and never appear in a repr or an error; bad values fail
naming the variable; a key matches only exactly, and the Bearer header is read strictly; the guard runs behind
BentoML's request metrics (recorded by slipway's cached-label subclass, same options), access log, CORS and
concurrency limit, and ahead of tracing (unless BentoML exports spans), the timeout and the request context;
BentoML builds its app through the factory that applies that order.
"""

from __future__ import annotations

import pytest
from _bentoml_impl.server import app as bentoml_app
from _bentoml_impl.server.app import ContextMiddleware
from bentoml._internal.server.http.access import AccessLogMiddleware
from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware, TimeoutMiddleware
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from serving.guard import RequestGuard, bearer_token, front_middlewares, key_matches, put_guard_in_front
from serving.metrics import RequestMetricsMiddleware
from serving.options import DEFAULT_OPEN_PATHS, OptionsError, api_keys_from, options_from_env


def test_defaults_turn_auth_off_and_cap_bodies_at_one_mebibyte():
    options = options_from_env({})
    assert options.api_keys == ()
    assert options.open_paths == DEFAULT_OPEN_PATHS
    assert options.max_body_bytes == 1 << 20
    assert options.fast_path and options.access_log
    assert options.unknown_categories == "refuse"
    assert options_from_env({"SLIPWAY_UNKNOWN_CATEGORIES": " Accept "}).unknown_categories == "accept"


@pytest.mark.parametrize(
    "raw",
    ["alpha,beta", " alpha , beta ,, ", '["alpha", "beta"]', "alpha,beta,alpha"],
)
def test_api_keys_parse_from_a_comma_list_or_a_json_list(raw: str):
    assert api_keys_from(raw) == ("alpha", "beta")


def test_keys_stay_out_of_the_options_repr_and_of_errors():
    options = options_from_env({"SLIPWAY_API_KEYS": "s3cret-key"})
    assert "s3cret-key" not in repr(options)
    with pytest.raises(OptionsError) as error:
        api_keys_from('["s3cret-key", 3]')
    assert "s3cret-key" not in str(error.value)
    assert "SLIPWAY_API_KEYS" in str(error.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SLIPWAY_MAX_BODY_BYTES", "0"),
        ("SLIPWAY_MAX_BODY_BYTES", "big"),
        ("SLIPWAY_AUTH_OPEN_PATHS", "healthz"),
        ("SLIPWAY_FAST_PATH", "maybe"),
        ("SLIPWAY_ACCESS_LOG", "2"),
        ("SLIPWAY_UNKNOWN_CATEGORIES", "ignore"),
    ],
)
def test_bad_values_fail_naming_the_variable(name: str, value: str):
    with pytest.raises(OptionsError, match=name):
        options_from_env({name: value})


def test_open_paths_can_be_emptied_or_listed():
    assert options_from_env({"SLIPWAY_AUTH_OPEN_PATHS": ""}).open_paths == ()
    assert options_from_env({"SLIPWAY_AUTH_OPEN_PATHS": "/livez, /metrics"}).open_paths == ("/livez", "/metrics")


def test_a_key_matches_only_exactly():
    keys = (b"alpha", b"beta")
    assert key_matches(b"beta", keys)
    assert not key_matches(b"bet", keys)
    assert not key_matches(b"beta2", keys)
    assert not key_matches(b"", keys)


@pytest.mark.parametrize(
    ("headers", "token"),
    [
        ([(b"authorization", b"Bearer abc")], b"abc"),
        ([(b"authorization", b"bearer  abc ")], b"abc"),
        ([(b"authorization", b"Basic abc")], None),
        ([(b"authorization", b"Bearer")], None),
        ([], None),
    ],
)
def test_bearer_token_is_read_strictly(headers: list[tuple[bytes, bytes]], token: bytes | None):
    assert bearer_token(headers) == token


def bentoml_stack(*, access_log: bool = True, cors: bool = False, max_concurrency: bool = False) -> list[Middleware]:
    """The middleware list BentoML 1.4's ServiceAppFactory builds for the slipway service, outermost first."""
    skip = ["/metrics", "/livez", "/readyz"]
    stack = [
        Middleware(RunnerTrafficMetricsMiddleware, namespace="bentoml_service", skip_paths=skip),
        Middleware(OpenTelemetryMiddleware, excluded_urls=None, default_span_details=None),
    ]
    if access_log:
        stack.append(Middleware(AccessLogMiddleware, skip_paths=skip))
    stack.append(Middleware(TimeoutMiddleware, timeout=30.0))
    if max_concurrency:
        stack.append(Middleware(MaxConcurrencyMiddleware, max_concurrency=8, skip_paths=skip))
    stack.append(Middleware(RequestGuard, api_keys=(), max_body_bytes=1 << 20))
    if cors:
        stack.append(Middleware(CORSMiddleware, allow_origins=["*"]))
    stack.append(Middleware(ContextMiddleware, context=None))
    return stack


def test_guard_runs_behind_metrics_access_log_and_cors_and_ahead_of_untraced_spans_and_the_timeout():
    # Given BentoML's stack with the access log, CORS and a concurrency limit configured, and no span exporter
    stack = bentoml_stack(cors=True, max_concurrency=True)
    # When the guard is moved to the front
    ordered = front_middlewares(stack, traced=False)
    # Then what every request must pass stays in front, in BentoML's order; what the fast path needs not is behind
    assert [m.cls for m in ordered] == [
        RequestMetricsMiddleware,
        AccessLogMiddleware,
        MaxConcurrencyMiddleware,
        CORSMiddleware,
        RequestGuard,
        OpenTelemetryMiddleware,
        TimeoutMiddleware,
        ContextMiddleware,
    ]
    # And every middleware keeps the options BentoML gave it
    assert ordered[0].kwargs == stack[0].kwargs
    assert {id(m) for m in ordered[1:]} == {id(m) for m in stack[1:]}


def test_guard_stays_behind_tracing_when_bentoml_exports_spans():
    ordered = front_middlewares(bentoml_stack(access_log=False), traced=True)
    assert [m.cls for m in ordered] == [
        RequestMetricsMiddleware,
        OpenTelemetryMiddleware,
        RequestGuard,
        TimeoutMiddleware,
        ContextMiddleware,
    ]


def test_a_stack_without_the_guard_is_left_as_it_is():
    stack = [m for m in bentoml_stack() if m.cls is not RequestGuard]
    assert front_middlewares(stack, traced=False) == stack


def test_bentoml_builds_its_app_through_the_reordering_factory(monkeypatch: pytest.MonkeyPatch):
    # Given BentoML's own app factory (restored after the test)
    original = bentoml_app.ServiceAppFactory
    monkeypatch.setattr(bentoml_app, "ServiceAppFactory", original)
    # When the guard is put in front, twice
    assert put_guard_in_front()
    installed = bentoml_app.ServiceAppFactory
    assert put_guard_in_front()
    # Then Service.to_asgi gets one subclass of BentoML's factory that reorders its middleware list
    assert bentoml_app.ServiceAppFactory is installed
    assert installed is not original and issubclass(installed, original)
    assert isinstance(installed.__dict__["middlewares"], property)
