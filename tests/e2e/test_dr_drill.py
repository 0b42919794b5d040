"""The disaster-recovery drill for real: a throwaway stack with one replica is backed up, its host lost while
an application commits (every process SIGKILLed, no WAL switched or waited for, everything but the backup
repository removed), re-provisioned by `pulumi up` from the backup, and compared (scripts/dr-drill)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pulumi.automation as auto
import pytest

from recovery.drill import PUSH_ALLOWANCE_SECONDS
from testbed.stacks import LiveStack, throwaway_stack
from testbed.support import processes_under
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e
BOUND = 5  # thorbis:backup.archiveTimeout of the drill's stack, in seconds


@pytest.fixture(scope="module")
def drill_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    with throwaway_stack(tmp_path_factory.mktemp("backend"), "e2e-dr", replicas=1) as live:
        live.stack.set_config("thorbis:backup.archiveTimeout", auto.ConfigValue(f"{BOUND}s"), path=True)
        started = time.monotonic()
        assert live.stack.up().summary.result == "succeeded"
        print(f"\nfirst up: {time.monotonic() - started:.0f} s")
        yield live


def script(live: LiveStack, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PULUMI_BACKEND_URL": f"file://{live.backend}"}
    return subprocess.run(
        [str(ROOT / "scripts" / argv[0]), *argv[1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_a_missing_backup_directory_stops_backup_and_preview_naming_the_key(drill_stack: LiveStack) -> None:
    stack, missing = drill_stack.stack, drill_stack.state_dir / "backup-volume-not-mounted"
    stack.set_config("thorbis:backup.directory", auto.ConfigValue(str(missing)), path=True)
    try:
        failed = script(drill_stack, "backup", stack.name, timeout=120)
        assert failed.returncode == 2, failed.stdout + failed.stderr
        assert "thorbis:backup.directory" in failed.stderr and "does not exist" in failed.stderr
        with pytest.raises(auto.CommandError) as caught:
            stack.preview()
        assert "thorbis:backup.directory" in str(caught.value)
        assert not missing.exists(), "a missing backup volume is never replaced by a local directory"
    finally:
        stack.remove_config("thorbis:backup.directory", path=True)


def test_a_crash_loses_only_rows_committed_within_the_bound_and_the_stack_matches_its_code(
    drill_stack: LiveStack, tmp_path: Path
) -> None:
    report_file = tmp_path / "drill.json"
    started = time.monotonic()
    drill = script(
        drill_stack,
        "dr-drill",
        drill_stack.stack.name,
        "--rows",
        "500",
        "--write-seconds",
        str(BOUND + PUSH_ALLOWANCE_SECONDS + 5),
        "--report",
        str(report_file),
    )
    print(f"\ndr-drill: {time.monotonic() - started:.0f} s\n{drill.stdout}")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    report = json.loads(report_file.read_text())
    assert report["ok"] is True
    assert report["restored_from_backup"] is True and report["rows_after_backup"] >= 1
    assert report["bound_seconds"] == BOUND
    # the writer ran past the bound: some of its rows are older than it at the crash, and all of those are back
    assert report["rows_committed_while_writing"] >= 100
    assert report["rows_lost_beyond_bound"] == 0
    assert 0 <= report["loss_window_seconds"] <= BOUND + PUSH_ALLOWANCE_SECONDS
    assert report["restored_to"]["segmentsNotReplayed"] == 0 and report["restored_to"]["lastCommit"]
    assert report["tables_compared"] >= 50 and report["mismatched_tables"] == []
    assert report["rows_compared"] >= 55  # the companies and customers; the marker rows are compared by id
    assert report["rls_equal"] and report["policies_equal"] and report["indexes_equal"]
    assert report["invalid_indexes"] == 0
    assert report["replicas_streaming"] == 1 and report["replicas_have_latest_row"] is True
    assert report["secrets_ok"] is True
    assert report["preview_changes"] == {}
    assert "postgres-primary" in report["removed"] and "backups" not in report["removed"]
    assert 0 < report["rto_seconds"] < 600
    assert "RTO" in drill.stdout and "committed rows lost" in drill.stdout
    drill_stack.stack.preview(expect_no_changes=True)
    assert processes_under(drill_stack.state_dir / "postgres-primary"), "the re-provisioned primary runs"
