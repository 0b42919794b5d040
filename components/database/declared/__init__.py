"""The declared data of sql/*.yaml read into typed models that give the kinds' specs."""

from pathlib import Path

#: Where the declared data lives: sql/ at the root of the project.
SQL_DIR = Path(__file__).resolve().parents[3] / "sql"
