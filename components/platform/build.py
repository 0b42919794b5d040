"""Where the servers run. Each platform is a component that ends in one typed ConnectionSpec."""

from __future__ import annotations

import pulumi

from components.connection import ConnectionSpec
from config import StackSettings


class Platform(pulumi.ComponentResource):
    """What each platform's component ends in."""

    connection: pulumi.Output[ConnectionSpec]
    #: `connection.for_database()`, known as soon as the primary is: what the database layer is given.
    database_connection: pulumi.Output[ConnectionSpec]


def build_platform(name: str, settings: StackSettings) -> Platform:
    """The platform the stack's config names: local (default), docker or external."""
    if settings.platform == "docker":
        from components.platform.docker.platform import DockerPlatform

        return DockerPlatform(name, settings)
    if settings.platform == "external":
        from components.platform.external.platform import ExternalPlatform

        return ExternalPlatform(name, settings)
    from components.platform.local.platform import LocalPlatform

    return LocalPlatform(name, settings)
