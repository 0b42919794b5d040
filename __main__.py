"""thorbis-db: load the stack's config, build the platform, build the database, export outputs."""

from pathlib import Path

from components.database.layer import DatabaseLayer
from components.outputs import export_outputs
from components.platform.build import build_platform
from config import load_settings

settings = load_settings(Path(__file__).parent)
platform = build_platform("thorbis", settings)
database = DatabaseLayer("thorbis", platform.database_connection, settings)
database.guard_destroy(platform)
export_outputs(settings, platform.connection)
