"""Turn pydantic's validation errors into our problems: full key, value as written, what is allowed."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from config.errors import Problem, show_value
from config.raw import PREFIX, unknown_key_reason
from config.settings import StackSettings

_KEY_MARKER = "[key]"  # pydantic's last loc item when a mapping key, not its value, is invalid


def translate(error: ValidationError, secret_names: Collection[str]) -> list[Problem]:
    """One problem per pydantic error, in our wording; values under `secret_names` are never shown."""
    return [_problem(detail, secret_names) for detail in error.errors()]


def failed_keys(error: ValidationError) -> set[str]:
    """The top-level config keys (camelCase) that have at least one error."""
    return {str(detail["loc"][0]) for detail in error.errors() if detail["loc"]}


def _problem(detail: ErrorDetails, secret_names: Collection[str]) -> Problem:
    loc = [str(part) for part in detail["loc"]]
    if loc and loc[-1] == _KEY_MARKER:
        loc = loc[:-2]  # the bad mapping key itself is the value shown
    key = PREFIX + ".".join(loc)
    secret = bool(loc) and loc[0] in secret_names
    value = show_value(detail["input"], secret=secret)
    return Problem(key, value, _reason(detail))


def _reason(detail: ErrorDetails) -> str:
    kind = detail["type"]
    loc = [str(part) for part in detail["loc"]]
    if kind.startswith("thorbis_"):
        return detail["msg"]
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = _aliases(parent) if parent is not None else []
        where = f"under {PREFIX}{'.'.join(loc[:-1])}"
        return unknown_key_reason(loc[-1], allowed, where)
    if loc and loc[-1] == _KEY_MARKER:  # a mapping key failed its pattern
        if loc[:-2] == ["postgres", "settings"]:
            return "is not a valid GUC name: use lower-case letters, digits, _ and . (^[a-z_][a-z0-9_.]*$)"
        return f"is not a valid name here; expected {_allowed(loc[:-2])}"
    allowed_text = _allowed(loc)
    return f"expected {allowed_text}" if allowed_text else detail["msg"]


def _walk(loc: list[str]) -> Iterator[FieldInfo]:
    """The fields along `loc`, from StackSettings down, stopping where the path leaves the models (a
    mapping of models, such as cache tiers by name, is walked through its key)."""
    model: type[BaseModel] | None = StackSettings
    parts = iter(loc)
    for part in parts:
        if model is None:
            return
        field = _field_by_alias(model, part)
        if field is None:
            return
        yield field
        model = _model_of(field.annotation)
        values = _mapping_values(field.annotation)
        if model is None and values is not None and next(parts, None) is not None:
            model = values


def _model_of(annotation: object) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _mapping_values(annotation: object) -> type[BaseModel] | None:
    """The model of a mapping's values (`Mapping[str, CacheTierSpec]`), or None."""
    origin = get_origin(annotation)
    if not (isinstance(origin, type) and issubclass(origin, Mapping)):
        return None
    arguments = get_args(annotation)
    return _model_of(arguments[-1]) if arguments else None


def _allowed(loc: list[str]) -> str | None:
    fields = list(_walk(loc))
    if not fields:
        return None
    extra = fields[-1].json_schema_extra
    allowed = extra.get("allowed") if isinstance(extra, dict) else None
    return str(allowed) if allowed is not None else None


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    """The model at the end of `loc` (through mapping keys), or None when the path leaves the models."""
    model: type[BaseModel] | None = StackSettings
    parts = iter(loc)
    for part in parts:
        field = _field_by_alias(model, part) if model is not None else None
        if field is None:
            return None
        model = _model_of(field.annotation)
        values = _mapping_values(field.annotation)
        if model is None and values is not None:
            if next(parts, None) is None:
                return None
            model = values
    return model


def _field_by_alias(model: type[BaseModel], alias: str) -> FieldInfo | None:
    for name, field in model.model_fields.items():
        if (field.alias or name) == alias:
            return field
    return None


def _aliases(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items() if name != "stack"]
