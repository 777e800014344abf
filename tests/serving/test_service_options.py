"""The service's environment knobs and the key check, in-process (the live behaviour is in test_service_guard).

Proves: keys parse from a comma list or a JSON list and never appear in a repr or an error; bad values fail
naming the variable; a key matches only exactly, and the Bearer header is read strictly.
"""

from __future__ import annotations

import pytest

from serving.guard import bearer_token, key_matches
from serving.options import DEFAULT_OPEN_PATHS, OptionsError, api_keys_from, options_from_env


def test_defaults_turn_auth_off_and_cap_bodies_at_one_mebibyte():
    options = options_from_env({})
    assert options.api_keys == ()
    assert options.open_paths == DEFAULT_OPEN_PATHS
    assert options.max_body_bytes == 1 << 20
    assert options.fast_path and options.access_log


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
