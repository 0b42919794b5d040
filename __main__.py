"""thorbis-db: load the stack's config, build the platform, build the database, export outputs."""

from pathlib import Path

import pulumi

from components.database.layer import DatabaseLayer
from components.outputs import export_outputs
from components.platform.build import build_platform
from components.resource import registered
from config import load_settings

settings = load_settings(Path(__file__).parent)
platform = build_platform("thorbis", settings)
database = DatabaseLayer("thorbis", platform.database_connection, settings)
database.guard_destroy(platform)
export_outputs(settings, platform.connection)
pulumi.run(registered)  # the SDK waits for its outputs in quadratic time: wait for the registrations first
