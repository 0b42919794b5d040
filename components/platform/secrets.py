"""Secrets from the stack's config, handed to resources as Pulumi secrets and nowhere in plain text."""

from __future__ import annotations

import pulumi
from pydantic.alias_generators import to_camel

from config import StackSettings


def secret_of(settings: StackSettings, name: str) -> pulumi.Output[str]:
    """A password of the settings as a secret Output; config validation has made sure it is set."""
    value = getattr(settings, name)
    if value is None:
        key = to_camel(name)  # the config key, as config's own alias generator names it
        raise ValueError(f"thorbis:{key} is not set: pulumi config set --secret thorbis:{key} ...")
    return pulumi.Output.secret(value.get_secret_value())
