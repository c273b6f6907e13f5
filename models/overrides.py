"""One way to change settings values: a validated copy (pydantic's `model_copy(update=)`
skips validation, so a bad override would slip through unchecked)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def with_overrides(model: M, overrides: Mapping[str, Any]) -> M:
    """A copy of `model` with `overrides` applied and validated again; fields set before
    (or overridden now) stay marked as set, so "was this given explicitly" still holds."""
    if not overrides:
        return model
    return type(model).model_validate({**model.model_dump(exclude_unset=True), **overrides})
