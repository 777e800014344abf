"""The machine's PostgreSQL for the tests that need a server of their own databases (topology, dashboard panels)."""

from __future__ import annotations

import os
from typing import Any

import pytest

POSTGRES_URL = os.environ.get("SLIPWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def admin_connection() -> Any:
    """An autocommit connection to the test's PostgreSQL server (CREATE/DROP DATABASE need one); the test fails
    naming the server when there is none."""
    import psycopg2

    try:
        connection = psycopg2.connect(POSTGRES_URL, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.fail(
            f"this test needs PostgreSQL at {POSTGRES_URL} (SLIPWAY_TEST_POSTGRES_URL moves it; "
            f'`pytest -m "not server"` leaves it out): {str(exc).strip()}'
        )
    connection.autocommit = True
    return connection
