"""The declared data of sql/*.yaml read into typed models that give the kinds' specs."""

from pathlib import Path
from typing import Any

import yaml

#: Where the declared data lives: sql/ at the root of the project.
SQL_DIR = Path(__file__).resolve().parents[3] / "sql"
#: libyaml's parser with PyYAML's safe constructors (the same values as yaml.safe_load): the pure-Python
#: parser took ~0.4 s of every program run on sql/schema alone, before the first resource was registered.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: Path) -> Any:
    """A declared data file's content, as yaml.safe_load reads it."""
    return yaml.load(path.read_text(), Loader=_LOADER)
