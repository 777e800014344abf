"""The ASGI middleware in front of every route: API-key auth, the body-size limit, error counting, fast /predict.

Runs before BentoML parses anything, so an unauthenticated or oversized request costs no validation work.
Keys are compared with hmac.compare_digest against every configured key (no early exit, so the time taken
does not tell which key nearly matched); no key, given or configured, is ever logged or echoed.

Where it sits: BentoML puts a service's middleware behind its own (request metrics, OpenTelemetry, access log,
timeout), and a span that nothing records plus the timeout's task and timer cost more than the model on a
one-row request. put_guard_in_front moves the guard right behind the middleware every request must still pass
(front_middlewares says which), so the fast /predict skips only what does nothing for it.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from starlette.middleware import Middleware

from serving import fastpath
from serving.metrics import RequestMetricsMiddleware, service_metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_LOG = logging.getLogger("slipway.serving")


def key_matches(given: bytes, keys: tuple[bytes, ...]) -> bool:
    """True when `given` equals one of `keys`; compares against all of them, each in constant time."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    return matched


def bearer_token(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    await _send_bytes(send, status, json.dumps(body).encode(), headers)


async def _send_bytes(send: Send, status: int, payload: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class RequestGuard:
    """Refuses requests without a valid key (401) or with a body over the limit (413); counts errors by kind."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_keys: tuple[str, ...] = (),
        open_paths: tuple[str, ...] = (),
        max_body_bytes: int = 1 << 20,
        counted_paths: tuple[str, ...] = ("/predict",),
        fast_path: str = "/predict",
    ) -> None:
        self.app = app
        self._keys = tuple(k.encode() for k in api_keys)
        self._open = frozenset(open_paths)
        self.max_body_bytes = max_body_bytes
        self._counted = frozenset(counted_paths)
        self._fast_path = fast_path

    def __repr__(self) -> str:
        return f"RequestGuard(keys={len(self._keys)}, open={sorted(self._open)}, max_body_bytes={self.max_body_bytes})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if self._keys and path not in self._open:
            token = bearer_token(headers)
            if token is None or not key_matches(token, self._keys):
                service_metrics().error("auth")
                problem = "missing 'Authorization: Bearer <key>' header" if token is None else "invalid API key"
                await _send_json(send, 401, {"error": problem}, [(b"www-authenticate", b'Bearer realm="slipway"')])
                return
        declared = next((v for n, v in headers if n == b"content-length"), None)
        if declared is not None:
            try:
                too_large = int(declared) > self.max_body_bytes
            except ValueError:
                too_large = False  # the server answers a malformed length itself
            if too_large:
                await self._too_large(send)
                return
        fast = fastpath.installed() if path == self._fast_path and scope.get("method") == "POST" else None
        if fast is not None or (declared is None and scope.get("method") not in ("GET", "HEAD", "OPTIONS")):
            # Read the body here, counting bytes (a chunked body declares no length), then answer it or replay it.
            messages: list[Message] = []
            size = 0
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] != "http.request":
                    break
                size += len(message.get("body", b""))
                if size > self.max_body_bytes:
                    await self._too_large(send)
                    return
                if not message.get("more_body", False):
                    break
            if fast is not None and messages[-1]["type"] == "http.request":
                request_id = next((v for n, v in headers if n == b"x-request-id"), None)
                answer = await fast.answer(
                    b"".join(m.get("body", b"") for m in messages),
                    request_id.decode("latin-1") if request_id is not None else None,
                )
                if path in self._counted:
                    _count_status(answer.status)
                await _send_bytes(send, answer.status, answer.body, list(answer.headers))
                return
            receive = _replay(messages, receive)
        if path in self._counted:
            send = self._counting(send)
        await self.app(scope, receive, send)

    async def _too_large(self, send: Send) -> None:
        service_metrics().error("body_too_large")
        await _send_json(send, 413, {"error": f"request body larger than the limit of {self.max_body_bytes} bytes"}, [])

    def _counting(self, send: Send) -> Send:
        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                _count_status(message["status"])
            await send(message)

        return counting_send


def _count_status(status: int) -> None:
    if status in (400, 422):
        service_metrics().error("validation")
    elif status >= 500:
        service_metrics().error("internal")


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def front_middlewares(middlewares: Sequence[Middleware], *, traced: bool) -> list[Middleware]:
    """BentoML's middleware list with RequestGuard moved right behind the middleware every request must pass.

    In front of the guard, in BentoML's order and each only when BentoML configured it: the request metrics
    (BentoML's histograms, recorded by serving.metrics.RequestMetricsMiddleware), the access log, CORS, the
    concurrency limit, and OpenTelemetry when `traced` (BentoML exports spans). Behind it, in BentoML's order:
    OpenTelemetry when nothing is exported, the request timeout (the fast path runs to the end on the event
    loop, so a timer cannot cut it short) and BentoML's request context. A list without RequestGuard comes back
    as it is.
    """
    from bentoml._internal.server.http.access import AccessLogMiddleware
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
    from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from starlette.middleware.cors import CORSMiddleware

    guards = [m for m in middlewares if m.cls is RequestGuard]
    if not guards:
        return list(middlewares)
    always = (AccessLogMiddleware, CORSMiddleware, MaxConcurrencyMiddleware)
    front: list[Middleware] = []
    behind: list[Middleware] = []
    for middleware in middlewares:
        if middleware.cls is RequestGuard:
            continue
        if middleware.cls is RunnerTrafficMetricsMiddleware:
            front.append(Middleware(RequestMetricsMiddleware, *middleware.args, **middleware.kwargs))
        elif middleware.cls in always or (traced and middleware.cls is OpenTelemetryMiddleware):
            front.append(middleware)
        else:
            behind.append(middleware)
    return [*front, *guards, *behind]


def put_guard_in_front() -> bool:
    """Make BentoML build this process's ASGI app with front_middlewares' order; True when it will.

    BentoML has no setting for where a service's middleware goes, so this replaces the app factory its
    `Service.to_asgi` imports (`_bentoml_impl.server.app.ServiceAppFactory`, bentoml 1.4) by a subclass that
    reorders the list. Call it before the worker builds its app (serving.service does, at import). Where the
    factory is not found, nothing changes but the speed: the guard stays behind BentoML's middleware, which
    still serves every request, and a warning says so.
    """
    try:
        from _bentoml_impl.server import app as bentoml_app
        from bentoml._internal.configuration.containers import BentoMLContainer
    except ImportError:
        bentoml_app = None
    factory = getattr(bentoml_app, "ServiceAppFactory", None)
    if factory is None or not isinstance(getattr(factory, "middlewares", None), property):
        _LOG.warning(
            "BentoML's app factory is not where bentoml 1.4 has it: RequestGuard stays behind BentoML's middleware"
        )
        return False
    if getattr(factory, "slipway_guard_in_front", False):
        return True

    class GuardInFrontAppFactory(factory):  # type: ignore[misc, valid-type]  # bentoml is untyped
        slipway_guard_in_front = True

        @property
        def middlewares(self) -> list[Middleware]:
            traced = BentoMLContainer.config.tracing.exporter_type.get() is not None
            ordered = front_middlewares(super().middlewares, traced=traced)
            names = ", ".join(getattr(m.cls, "__name__", repr(m.cls)) for m in ordered)
            _LOG.info("ASGI middleware, outermost first: %s", names)
            return ordered

    bentoml_app.ServiceAppFactory = GuardInFrontAppFactory
    return True


def skip_uvicorn_access_log(logger: logging.Logger | None = None) -> bool:
    """Stop uvicorn formatting an access line per request that no handler prints; True when it was stopped.

    uvicorn builds each request's access line (client address, quoted path) whenever its `uvicorn.access` logger
    `hasHandlers()`, which any handler on the root logger makes true. In a BentoML worker that logger has no
    handler of its own and inherits the root's WARNING level, so the INFO line is dropped after it was built
    (~2% of a one-row request's worker time, measured with py-spy). Not propagating makes hasHandlers() false
    for the connections that open afterwards; nothing that was printed stops printing. A logger that has its
    own handler or is enabled for INFO (someone wants these lines) is left alone.
    """
    access = logger if logger is not None else logging.getLogger("uvicorn.access")
    if access.handlers or access.isEnabledFor(logging.INFO):
        return False
    access.propagate = False
    return True
