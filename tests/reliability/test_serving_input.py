"""A real `bentoml serve` of a real Bento, with API keys and input limits, under generated and hostile requests.

Proves: schemathesis, reading the served OpenAPI document, generates over a thousand valid and invalid requests
for every documented operation and none gets a 5xx or an answer that violates the documented schema; keyless and
wrong-key requests (every way of getting the header wrong) get 401 and no key, right or wrong, reaches the
server's log; a batch over the row limit gets a 400 naming the field and a body over the byte limit a 413 naming
the limit, whether it declares its length or is chunked, while a request exactly at each limit is served.
"""

# ruff: noqa: F811  (the fixtures imported from test_bento are used by name)
from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.reliability.conftest import Figures
from tests.serving.test_bento import (  # noqa: F401
    BuiltBento,
    ExampleModel,
    RunningServer,
    built_bento,
    example_model,
    stop_server,
)
from tests.serving.test_bento import start_server as start

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

KEY = "rel-key-4f0b9c2e51"
MAX_ROWS = 50
MAX_BODY = 64_000
SCHEMATHESIS_CASES = 1_200  # positive and negative, spread over the documented operations


@pytest.fixture(scope="module")
def guarded(built_bento: BuiltBento, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One worker, an API key, 50 rows and 64 kB per request at most."""
    process, server = start(
        built_bento,
        tmp_path_factory.mktemp("guarded"),
        SLIPWAY_WORKERS="1",
        SLIPWAY_API_KEYS=KEY,
        SLIPWAY_MAX_BATCH_ROWS=str(MAX_ROWS),
        SLIPWAY_MAX_BODY_BYTES=str(MAX_BODY),
    )
    try:
        yield server
    finally:
        stop_server(process)


AUTH = {"authorization": f"Bearer {KEY}"}


def records(example: ExampleModel, rows: int) -> list[dict[str, Any]]:
    base = example.rows.to_dict(orient="records")
    return [base[i % len(base)] for i in range(rows)]


@pytest.mark.reliability("schemathesis")
def test_generated_requests_get_no_5xx_and_no_answer_outside_the_documented_schema(
    guarded: RunningServer, figures: Figures
) -> None:
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    # Given the OpenAPI document the server publishes
    document = httpx.get(f"{guarded.url}/docs.json", headers=AUTH, timeout=30.0).json()
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any(op.path == "/predict" for op in operations), [op.label for op in operations]
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    # /predict, the one operation that takes input, gets the cases; a GET without parameters has one valid form
    # and no invalid one (hypothesis finds the negative strategy unsatisfiable), so it is called a few times
    per_predict = SCHEMATHESIS_CASES // 2
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    sent = 0
    with httpx.Client(base_url=guarded.url, timeout=30.0) as http:

        def run(operation: Any, mode: Any, examples: int) -> None:
            @settings(
                max_examples=examples,
                database=None,
                deadline=None,
                derandomize=True,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def send(case: Any) -> None:
                nonlocal sent
                kwargs = case.as_transport_kwargs(base_url=guarded.url, headers=AUTH)
                response = http.request(
                    kwargs["method"],
                    kwargs["url"],
                    headers=kwargs.get("headers"),
                    params=kwargs.get("params"),
                    content=_body(kwargs),
                )
                sent += 1
                statuses[response.status_code] += 1
                try:
                    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
                except Exception as exc:  # schemathesis raises a group of check failures
                    failures.append(f"{case.method} {case.path} {mode.value} -> {response.status_code}: {exc}"[:600])

            try:
                send()
            except Unsatisfiable:
                if operation.path == "/predict":
                    raise
                unsatisfiable.append(f"{operation.label} {mode.value}")

        # When every operation gets valid and invalid requests (/predict all but a few)
        unsatisfiable: list[str] = []
        for operation in operations:
            examples = per_predict if operation.path == "/predict" else 5
            for mode in modes:
                run(operation, mode, examples)
    figures.tried = (
        f"schemathesis {schemathesis.SCHEMATHESIS_VERSION} cases from /docs.json, positive and negative, over "
        f"{len(operations)} operations ({', '.join(op.label for op in operations)}); checks not_a_server_error, "
        "response_schema_conformance"
    )
    figures.times = sent
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    figures.add(
        responses_5xx=server_errors,
        schema_violations=len(failures),
        statuses=", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())),
        no_negative_form=len(unsatisfiable),
    )
    # Then there are over a thousand of them, none a 5xx and none outside the documented schema
    assert sent >= 1_000
    assert server_errors == 0, failures[:5]
    assert not failures, "\n".join(failures[:10])
    assert statuses[200] > 0 and sum(n for s, n in statuses.items() if 400 <= s < 500) > 0


def _body(kwargs: dict[str, Any]) -> bytes | None:
    if "json" in kwargs:
        return json.dumps(kwargs["json"]).encode()
    data = kwargs.get("data")
    if data is None:
        return None
    return data if isinstance(data, bytes) else str(data).encode()


@pytest.mark.reliability("auth")
def test_keyless_and_wrong_key_requests_get_401_and_no_key_is_logged(
    guarded: RunningServer, example_model: ExampleModel, figures: Figures
) -> None:
    body = {"records": records(example_model, 1)}
    wrong = "wrong-key-7be1c0"
    attempts: dict[str, dict[str, str]] = {
        "no header": {},
        "wrong key": {"authorization": f"Bearer {wrong}"},
        "key prefix": {"authorization": f"Bearer {KEY[:-1]}"},
        "key plus a character": {"authorization": f"Bearer {KEY}x"},
        "key in another case": {"authorization": f"Bearer {KEY.upper()}"},
        "Basic scheme": {"authorization": f"Basic {KEY}"},
        "no scheme": {"authorization": KEY},
        "empty bearer": {"authorization": "Bearer"},
        "key in another header": {"x-api-key": KEY},
    }
    rounds = 25
    statuses: Counter[int] = Counter()
    with httpx.Client(base_url=guarded.url, timeout=30.0) as http:
        for _ in range(rounds):
            for headers in attempts.values():
                response = http.post("/predict", json=body, headers=headers)
                statuses[response.status_code] += 1
                assert KEY not in response.text and wrong not in response.text
            for path in ("/docs.json", "/"):  # every path but the health and metrics ones needs the key
                statuses[http.get(path).status_code] += 1
        # The right key is served
        served = sum(http.post("/predict", json=body, headers=AUTH).status_code == 200 for _ in range(rounds))
    time.sleep(1.0)  # the access log is written after the answer
    log = guarded.log_path.read_text(errors="replace")
    figures.tried = (
        f"{len(attempts)} ways of a missing or wrong key on POST /predict, keyless GETs of /docs.json and /, "
        f"{rounds} rounds"
    )
    figures.times = sum(statuses.values())
    figures.add(
        answered_401=statuses[401],
        not_401=sum(statuses.values()) - statuses[401],
        right_key_served=served,
        keys_in_server_log=sum(k in log for k in (KEY, wrong, KEY.upper())),
        comparison="hmac.compare_digest against every key (serving/guard.py; not timed)",
    )
    assert statuses == Counter({401: rounds * (len(attempts) + 2)})
    assert served == rounds
    assert KEY not in log and wrong not in log and KEY.upper() not in log


@pytest.mark.reliability("input-limits")
def test_row_and_body_limits_are_enforced_at_and_beyond_the_limit(
    guarded: RunningServer, example_model: ExampleModel, figures: Figures
) -> None:
    at_limit = records(example_model, MAX_ROWS)
    over_rows = records(example_model, MAX_ROWS + 1)
    columns_over = {k: [r[k] for r in over_rows] for k in over_rows[0]}
    filler = b'{"records": [' + b" " * (MAX_BODY + 1) + b"]}"

    def chunked() -> Iterator[bytes]:
        yield b'{"records": ['
        for _ in range(MAX_BODY // 4096 + 2):
            yield b" " * 4096
        yield b"]}"

    outcomes: list[tuple[str, int, str]] = []
    headers = {**AUTH, "content-type": "application/json"}
    with httpx.Client(base_url=guarded.url, timeout=30.0) as http:
        for _ in range(10):
            r = http.post("/predict", json={"records": at_limit}, headers=AUTH)
            outcomes.append(("rows at the limit", r.status_code, r.text[:200]))
            r = http.post("/predict", json={"records": over_rows}, headers=AUTH)
            outcomes.append(("records over the limit", r.status_code, r.text))
            r = http.post("/predict", json={"columns": columns_over}, headers=AUTH)
            outcomes.append(("columns over the limit", r.status_code, r.text))
            r = http.post("/predict", content=filler, headers=headers)
            outcomes.append(("body over the limit", r.status_code, r.text))
            r = http.post("/predict", content=chunked(), headers=headers)
            outcomes.append(("chunked body over the limit", r.status_code, r.text))
    expected = {
        "rows at the limit": (200, "predictions"),
        "records over the limit": (400, "records"),
        "columns over the limit": (400, "columns"),
        "body over the limit": (413, str(MAX_BODY)),
        "chunked body over the limit": (413, str(MAX_BODY)),
    }
    wrong = [
        (name, status, text[:200])
        for name, status, text in outcomes
        if (status, True) != (expected[name][0], expected[name][1] in text)
    ]
    figures.tried = (
        f"batches of {MAX_ROWS} and {MAX_ROWS + 1} rows (both forms), bodies over {MAX_BODY:,} bytes "
        "declared and chunked, 10 rounds"
    )
    figures.times = len(outcomes)
    figures.add(
        as_expected=len(outcomes) - len(wrong),
        limits=f"{MAX_ROWS} rows (SLIPWAY_MAX_BATCH_ROWS), {MAX_BODY:,} bytes (SLIPWAY_MAX_BODY_BYTES)",
    )
    assert not wrong, wrong[:5]
