"""Shipped examples: data loaders and model builders that configs name as `module:function`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def check_params(params: Mapping[str, Any], known: Iterable[str]) -> None:
    """Refuse a param the builder does not read: a misspelt `max_iters` must not be silently ignored."""
    allowed = set(known)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"unknown param(s) {unknown}; this builder reads {sorted(allowed)}")
