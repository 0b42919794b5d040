"""Read a stack's `thorbis:` configuration once, at the edge, into validated `StackSettings`."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path

import pulumi
from pydantic import ValidationError

from config.errors import ConfigError
from config.raw import read_namespace
from config.rules import check_rules
from config.settings import SettingsContext, StackSettings
from config.translate import failed_keys, translate


def parse_settings(
    stack: str, raw: Mapping[str, str], secret_keys: Collection[str], project_root: Path
) -> StackSettings:
    """Validate `raw` (full key to string, as Pulumi passes config) for `stack`.

    `secret_keys` are the full keys Pulumi stores encrypted; relative paths are taken from
    `project_root`. Raises one `ConfigError` listing every problem found.
    """
    namespace = read_namespace(stack, raw, secret_keys)
    problems = list(namespace.problems)
    data = {**namespace.values, "stack": stack}
    context = SettingsContext(stack=stack, project_root=project_root.resolve())
    failed = set(namespace.unusable)
    try:
        settings = _validate(data, context)
    except ValidationError as error:
        problems.extend(translate(error, namespace.secret_names))
        failed |= failed_keys(error)
        # every key has a default: without the failed keys the rest validates, so the rules that do
        # not read a failed key can still report their problems in the same error
        settings = _validate({k: v for k, v in data.items() if k not in failed}, context)
    problems.extend(check_rules(settings, failed))
    if problems:
        raise ConfigError(stack, problems)
    return settings


def _validate(data: Mapping[str, object], context: SettingsContext) -> StackSettings:
    return StackSettings.model_validate(data, context=context, by_alias=True, by_name=False)


def load_settings(project_root: Path) -> StackSettings:
    """The settings of the running Pulumi stack, from the config the engine hands the program."""
    raw = {key: _as_text(value) for key, value in pulumi.runtime.get_config_env().items()}
    secret_keys = pulumi.runtime.get_config_secret_keys_env()
    return parse_settings(pulumi.get_stack(), raw, secret_keys, project_root)


def _as_text(value: object) -> str:
    # the engine passes strings; anything else is re-encoded as Pulumi itself would have
    return value if isinstance(value, str) else json.dumps(value)
