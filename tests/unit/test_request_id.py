"""Request ids: the caller's when sane, else fresh ones in time order (the inference log indexes them)."""

from __future__ import annotations

import re
import time

from serving.predictor import new_request_id, request_id_from


def test_fresh_ids_are_unique_32_hex_digits_in_time_order() -> None:
    ids = [new_request_id() for _ in range(500)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    before = new_request_id()
    time.sleep(0.002)
    assert new_request_id() > before  # later ids sort after earlier ones: the index grows at its right edge


def test_a_sane_caller_id_is_kept_and_a_hostile_one_replaced() -> None:
    assert request_id_from("order-42:retry.1") == "order-42:retry.1"
    replaced = request_id_from("bad id; DROP TABLE")
    assert re.fullmatch(r"[0-9a-f]{32}", replaced)
    assert re.fullmatch(r"[0-9a-f]{32}", request_id_from(None))
