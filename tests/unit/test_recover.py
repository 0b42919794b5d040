"""scripts/recover's judgement of a file backend's lock: removed only when the update that took it is gone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from recovery.recover import FileBackend, Lock, locks_in, process_started_at, repair_writes


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


def test_a_save_cut_by_a_kill_is_undone_and_the_last_whole_checkpoint_kept(tmp_path: Path) -> None:
    """As found after a kill (gocloud's fileblob: content aside, .attrs in place, then the rename)."""
    backend = FileBackend(tmp_path, "thorbis-db", "dev")
    stacks = tmp_path / ".pulumi" / "stacks" / "thorbis-db"
    stacks.mkdir(parents=True)
    whole = {"version": 3, "deployment": {}}
    (stacks / "dev.json").write_text(json.dumps(whole))
    (stacks / "dev.json.attrs").write_text("")
    (stacks / "dev.json.18ec5470fc912bb1.tmp").write_text('{"version": 3, "deplo')
    (stacks / "dev.json.bak").write_text(json.dumps(whole))
    (stacks / "dev.json.bak.attrs").write_text('{"user.content_type": "text/plain; charset=utf-8", "md5": "x"}')
    (stacks / "dev-2.json.attrs").write_text("")  # another stack's: not ours to touch
    done = repair_writes(backend)
    assert len(done) == 2
    assert sorted(path.name for path in stacks.iterdir()) == [
        "dev-2.json.attrs",
        "dev.json",
        "dev.json.bak",
        "dev.json.bak.attrs",
    ]
    assert repair_writes(backend) == []
