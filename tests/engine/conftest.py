"""A throwaway Pulumi project with one Python dynamic resource that writes a file."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PROGRAM = """
import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, Resource, ResourceProvider, UpdateResult


class FileProvider(ResourceProvider):
    def create(self, props):
        with open(props["path"], "w") as f:
            f.write(props["content"])
        return CreateResult(id_=props["path"], outs=props)

    def diff(self, id_, olds, news):
        changed = [key for key in ("path", "content") if olds.get(key) != news.get(key)]
        return DiffResult(changes=bool(changed), replaces=[k for k in changed if k == "path"])

    def update(self, id_, olds, news):
        with open(news["path"], "w") as f:
            f.write(news["content"])
        return UpdateResult(outs=news)

    def read(self, id_, props):
        with open(id_) as f:
            return ReadResult(id_=id_, outs={**props, "content": f.read()})

    def delete(self, id_, props):
        import os
        os.remove(id_)


class File(Resource):
    def __init__(self, name, path, content):
        super().__init__(FileProvider(), name, {"path": path, "content": content})


config = pulumi.Config()
written = File("greeting", config.require("path"), config.require_secret("message"))
pulumi.export("path", written.id)
"""

SECRET = "s3cr3t-never-in-plain-text"


@dataclass
class Project:
    directory: Path
    output_file: Path
    backend: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PULUMI_BACKEND_URL": f"file://{self.backend}"}


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    directory = tmp_path / "project"
    directory.mkdir()
    backend = tmp_path / "backend"
    backend.mkdir()
    (directory / "__main__.py").write_text(PROGRAM)
    (directory / "Pulumi.yaml").write_text(
        f"name: engine-check\nruntime:\n  name: python\n  options:\n    virtualenv: {Path(sys.prefix)}\n"
    )
    yield Project(directory, tmp_path / "greeting.txt", backend)


def backend_text(project: Project) -> str:
    """Everything the file backend stores: state, history, backups."""
    return "\n".join(p.read_text(errors="replace") for p in project.backend.rglob("*") if p.is_file())
