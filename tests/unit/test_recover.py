"""scripts/recover's judgement of a file backend's lock: removed only when the update that took it is gone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from recovery.recover import Lock, locks_in, process_started_at


def lock(pid: int, taken_at: datetime, hostname: str | None = None) -> Lock:
    return Lock(Path("lock.json"), pid, hostname or socket.gethostname(), taken_at)


def test_a_lock_of_a_process_that_runs_here_and_took_it_is_live() -> None:
    started = process_started_at(os.getpid())
    assert started is not None and abs(started - datetime.now(UTC)) < timedelta(hours=12)
    assert lock(os.getpid(), datetime.now(UTC)).held_by_a_live_update()


def test_a_lock_of_a_process_that_is_gone_is_stale() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert not lock(gone.pid, datetime.now(UTC)).held_by_a_live_update()


def test_a_lock_taken_before_its_pid_was_reused_is_stale() -> None:
    long_ago = datetime.now(UTC) - timedelta(days=400)
    assert not lock(os.getpid(), long_ago).held_by_a_live_update()


def test_a_lock_taken_on_another_host_is_not_judged_live_here() -> None:
    assert not lock(os.getpid(), datetime.now(UTC), hostname="another-host").held_by_a_live_update()


def test_lock_files_are_read_as_pulumi_writes_them(tmp_path: Path) -> None:
    """pkg/backend/diy/lock.go: Go's time.Time in JSON is RFC 3339 with nanoseconds."""
    content = {"pid": 4242, "username": "root", "hostname": "vm", "timestamp": "2026-11-28T19:54:54.123456789Z"}
    (tmp_path / "0b7e.json").write_text(json.dumps(content))
    (found,) = locks_in(tmp_path)
    assert (found.pid, found.hostname) == (4242, "vm")
    assert found.taken_at == datetime(2026, 11, 28, 19, 54, 54, 123456, tzinfo=UTC)
