"""The built engine, driven through its command line: up, no-change up, preview, refresh, destroy."""

from __future__ import annotations

import subprocess

from tests.engine.conftest import SECRET, Project, backend_text


def pulumi(project: Project, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["pulumi", *args, "--non-interactive", "--color", "never"],
        cwd=project.directory,
        env=project.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"pulumi {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_lifecycle_through_the_cli(project: Project) -> None:
    pulumi(project, "stack", "init", "dev")
    pulumi(project, "config", "set", "path", str(project.output_file))
    pulumi(project, "config", "set", "--secret", "message", SECRET)
    assert SECRET not in (project.directory / "Pulumi.dev.yaml").read_text()

    first = pulumi(project, "up", "--yes")
    assert "2 created" in first.stdout
    assert project.output_file.read_text() == SECRET

    second = pulumi(project, "up", "--yes")
    assert "2 unchanged" in second.stdout
    pulumi(project, "preview", "--expect-no-changes")
    pulumi(project, "refresh", "--yes")
    pulumi(project, "preview", "--expect-no-changes")
    assert SECRET not in backend_text(project)
    assert SECRET not in pulumi(project, "stack", "output", "--show-secrets=false").stdout

    pulumi(project, "destroy", "--yes")
    assert not project.output_file.exists()
    assert "0 resources" in pulumi(project, "stack", "--show-ids").stdout or "no resources" in (
        pulumi(project, "stack").stdout.lower()
    )


def test_refresh_sees_a_file_changed_behind_its_back_and_up_repairs_it(project: Project) -> None:
    pulumi(project, "stack", "init", "dev")
    pulumi(project, "config", "set", "path", str(project.output_file))
    pulumi(project, "config", "set", "--secret", "message", SECRET)
    pulumi(project, "up", "--yes")

    project.output_file.write_text("edited by hand")
    pulumi(project, "refresh", "--yes")
    drifted = pulumi(project, "preview", "--expect-no-changes", check=False)
    assert drifted.returncode != 0, drifted.stdout
    assert "1 to update" in drifted.stdout

    pulumi(project, "up", "--yes")
    assert project.output_file.read_text() == SECRET
    pulumi(project, "preview", "--expect-no-changes")
    pulumi(project, "destroy", "--yes")
