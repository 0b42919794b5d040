"""Secrets from the stack's config, handed to resources as Pulumi secrets and nowhere in plain text."""

from __future__ import annotations

import pulumi

from config import StackSettings


def secret_of(settings: StackSettings, name: str) -> pulumi.Output[str]:
    """A password of the settings as a secret Output; config validation has made sure it is set."""
    value = getattr(settings, name)
    if value is None:
        key = "".join(word if i == 0 else word.capitalize() for i, word in enumerate(name.split("_")))
        raise ValueError(f"thorbis:{key} is not set: pulumi config set --secret thorbis:{key} ...")
    return pulumi.Output.secret(value.get_secret_value())
