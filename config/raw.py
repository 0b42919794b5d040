"""Read the `thorbis:` keys out of the flat string map Pulumi hands a program, before any validation.

Pulumi passes every value as a string: mappings as JSON text, booleans as "true"/"false". Here the
mappings are decoded, unknown keys and plain-text secrets are reported, and secret values are wrapped
in `SecretStr` so that not even pydantic's own errors hold them in clear.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from pydantic import SecretStr

from config.errors import Problem, show_value
from config.settings import CONFIG_KEYS, NAMESPACE, OBJECT_KEYS, SECRET_KEYS

PREFIX = f"{NAMESPACE}:"


@dataclass
class NamespaceValues:
    """The `thorbis:` keys of one stack, decoded, ready for `StackSettings.model_validate`."""

    values: dict[str, object] = field(default_factory=dict)
    """Config key (camelCase, no namespace) to decoded value."""
    secret_names: set[str] = field(default_factory=set)
    """Keys whose values must never be shown: the secret keys and any key stored as a secret."""
    unusable: set[str] = field(default_factory=set)
    """Keys given but left out of `values` because they could not be decoded."""
    problems: list[Problem] = field(default_factory=list)


def read_namespace(stack: str, raw: Mapping[str, str], secret_keys: Collection[str]) -> NamespaceValues:
    """Decode the `thorbis:` keys of `raw`; keys of other namespaces are not ours and are skipped."""
    result = NamespaceValues()
    for full_key, text in raw.items():
        if not full_key.startswith(PREFIX):
            continue
        name = full_key.removeprefix(PREFIX)
        is_secret = name in SECRET_KEYS or full_key in secret_keys
        if is_secret:
            result.secret_names.add(name)
        if name not in CONFIG_KEYS:
            result.problems.append(Problem(full_key, show_value(text, secret=is_secret), _unknown_key(name)))
        elif name in SECRET_KEYS:
            _read_secret(stack, name, text, full_key in secret_keys, result)
        elif name in OBJECT_KEYS:
            _read_object(name, text, is_secret, result)
        else:
            result.values[name] = text
    return result


def _read_secret(stack: str, name: str, text: str, encrypted: bool, result: NamespaceValues) -> None:
    result.values[name] = SecretStr(text)
    if not encrypted:
        result.problems.append(
            Problem(
                f"{PREFIX}{name}",
                show_value(text, secret=True),
                "is stored in plain text; remove it from the stack file and set it encrypted with "
                f"`pulumi config set --secret -s {stack} {PREFIX}{name}` (it prompts for the value)",
            )
        )


def _read_object(name: str, text: str, is_secret: bool, result: NamespaceValues) -> None:
    try:
        decoded = json.loads(text)
    except json.JSONDecodeError:
        decoded = text
    if isinstance(decoded, dict):
        result.values[name] = decoded
        return
    result.unusable.add(name)
    result.problems.append(
        Problem(
            f"{PREFIX}{name}",
            show_value(decoded, secret=is_secret),
            f"must be a mapping (a YAML object under {PREFIX}{name}, "
            f"or set single keys with `pulumi config set --path '{PREFIX}{name}.<key>' <value>`)",
        )
    )


def _unknown_key(name: str) -> str:
    section, dot, _ = name.partition(".")
    if dot and section in OBJECT_KEYS:
        return (
            f"unknown key; nested keys go inside the mapping {PREFIX}{section} "
            f"(or use `pulumi config set --path '{PREFIX}{name}' <value>`)"
        )
    return unknown_key_reason(name, CONFIG_KEYS, f"in namespace {NAMESPACE}")


def unknown_key_reason(name: str, allowed: Collection[str], where: str) -> str:
    """`unknown key[; did you mean X?]; allowed keys <where>: a, b, c`."""
    close = difflib.get_close_matches(name, list(allowed), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown key{hint}; allowed keys {where}: {', '.join(allowed)}"
