"""The built engine, driven through the Automation API (pulumi.automation)."""

from __future__ import annotations

import json

import pulumi.automation as auto

from tests.engine.conftest import SECRET, Project, backend_text


def test_lifecycle_through_the_automation_api(project: Project) -> None:
    stack = auto.create_stack(
        "dev",
        work_dir=str(project.directory),
        opts=auto.LocalWorkspaceOptions(env_vars={"PULUMI_BACKEND_URL": f"file://{project.backend}"}),
    )
    stack.set_config("path", auto.ConfigValue(str(project.output_file)))
    stack.set_config("message", auto.ConfigValue(SECRET, secret=True))

    first = stack.up()
    assert first.summary.result == "succeeded"
    assert first.summary.resource_changes == {"create": 2}
    assert project.output_file.read_text() == SECRET

    second = stack.up()
    assert second.summary.resource_changes == {"same": 2}
    preview = stack.preview(expect_no_changes=True)
    assert preview.change_summary == {auto.OpType.SAME: 2}
    assert stack.refresh().summary.result == "succeeded"

    stored = backend_text(project)
    assert SECRET not in stored
    assert "ciphertext" in stored
    assert SECRET not in json.dumps({k: v.value for k, v in stack.outputs().items() if not v.secret})

    assert stack.destroy().summary.resource_changes == {"delete": 2}
    assert not project.output_file.exists()
    stack.workspace.remove_stack("dev")
