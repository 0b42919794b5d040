"""`scripts/recover STACK` (`make recover STACK=...`): bring back a stack whose `pulumi up` was interrupted
(killed, the host restarted, the terminal closed), without a terminal and without editing files by hand.
Safe to run when nothing was interrupted: every step then finds nothing to do.

1. The lock. An interrupted update leaves the stack locked. On a file backend the lock names the process
   and host that took it: when that process still runs here, an update is in progress and we stop;
   otherwise what a kill during a save of the stack left is undone (see repair_writes: without it the
   stack cannot even be read) and the lock is removed (`pulumi cancel`). On other backends the update
   history says whether an update is in progress; it is cancelled.
2. Pending operations: what the engine started and never saw finish. Pending creates are cleared (`pulumi
   refresh --clear-pending-creates`, which asks on a terminal and not here): every kind adopts what already
   exists, so the next `up` creates what is missing and finishes what was half done. The engine drops the
   other pending operations (updates, deletes) itself at the next deployment, after the refresh reads them.
3. `pulumi refresh`: the state takes what really exists (a server a kill stopped is drift, a half-made
   data directory counts as none: components/platform/local/postgres_files.py sets it aside at `up`).
4. `pulumi up`, then `pulumi preview`, which must show no change.

Exit 0 when the stack matches its code again, 1 when a step failed, 2 when recovery must not run (an update
is running, no such stack).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pulumi.automation as auto

from components.platform.local import process
from ops.stack import ROOT, ToolError, last_line, open_stack


@dataclass(frozen=True)
class Lock:
    """A lock file of a file backend: who took it (pulumi's own record) and where it lies."""

    path: Path
    pid: int
    hostname: str
    taken_at: datetime

    def held_by_a_live_update(self) -> bool:
        """Its process runs on this host and started before the lock was taken (not a reused pid)."""
        if self.hostname != socket.gethostname() or not process.pid_alive(self.pid):
            return False
        started = process_started_at(self.pid)
        return started is None or started <= self.taken_at + timedelta(seconds=1)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.hostname}, taken {self.taken_at:%Y-%m-%d %H:%M:%S} UTC"


def process_started_at(pid: int) -> datetime | None:
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        booted = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return datetime.fromtimestamp(booted + ticks / os.sysconf("SC_CLK_TCK"), UTC)


@dataclass(frozen=True)
class FileBackend:
    """One stack's files in a file:// backend, laid out as pkg/backend/diy writes them."""

    root: Path
    project: str
    stack: str

    def locks(self) -> list[Lock]:
        """.pulumi/locks/organization/<project>/<stack>/<id>.json (older backends: .pulumi/locks/<stack>/)."""
        locks = self.root / ".pulumi" / "locks"
        return [*locks_in(locks / "organization" / self.project / self.stack), *locks_in(locks / self.stack)]

    def written(self, suffix: str) -> list[Path]:
        """The stack's checkpoint and history blobs (and their side files) whose names end with `suffix`."""
        pulumi = self.root / ".pulumi"
        checkpoints = [
            path
            for directory in (pulumi / "stacks" / self.project, pulumi / "stacks")
            for path in directory.glob(f"{self.stack}.json*{suffix}")
        ]
        histories = [
            path
            for directory in (pulumi / "history" / self.project / self.stack, pulumi / "history" / self.stack)
            for path in directory.glob(f"*{suffix}")
        ]
        return sorted(checkpoints + histories)


def file_backend(name: str, work_dir: Path | None) -> FileBackend | None:
    """The stack's files when the backend is a file:// one (PULUMI_BACKEND_URL), else None."""
    workspace = auto.LocalWorkspace(work_dir=str(work_dir or ROOT))
    url = urlsplit(workspace.who_am_i().url or "")
    if url.scheme != "file":
        return None
    return FileBackend(Path(unquote(url.path)), workspace.project_settings().name, name)


def locks_in(directory: Path) -> list[Lock]:
    """The lock files of one directory, as pkg/backend/diy/lock.go writes them (pid, hostname, timestamp)."""
    found = []
    for lock_file in sorted(directory.glob("*.json")):
        content = json.loads(lock_file.read_text())
        taken = datetime.fromisoformat(str(content.get("timestamp", "1970-01-01T00:00:00+00:00")))
        found.append(Lock(lock_file, int(content.get("pid", 0)), str(content.get("hostname", "")), taken))
    return found


class UpdateRunning(Exception):
    """The stack's lock belongs to an update that is still running."""


def refuse_while_running(backend: FileBackend) -> None:
    live = [lock for lock in backend.locks() if lock.held_by_a_live_update()]
    if live:
        raise UpdateRunning(
            f"stack '{backend.stack}' is locked by an update that is still running ({live[0].describe()}); "
            "wait for it to end, or stop it, then run this again"
        )


def repair_writes(backend: FileBackend) -> list[str]:
    """Undo what a kill while the CLI saved the stack leaves. The file backend (gocloud's fileblob) writes a
    blob's new content to `<name>.<random>.tmp`, then its metadata file `<name>.attrs` in place (content
    type, MD5), then renames the content over the old: killed in between, the last whole checkpoint is
    still there, beside an empty `.attrs` the backend cannot read ("failed to load checkpoint: EOF")."""
    done = []
    for attrs in backend.written(".attrs"):
        try:
            json.loads(attrs.read_text())
        except ValueError:
            attrs.unlink()  # only metadata: without it the blob reads as plain content
            done.append(f"removed {attrs}, the metadata of a blob the kill cut short (the blob is whole)")
    for unfinished in backend.written(".tmp"):
        unfinished.unlink()
        done.append(f"removed {unfinished}, a save of the stack that the kill interrupted before it was used")
    return done


def release_lock(stack: auto.Stack, backend: FileBackend | None) -> list[str]:
    """Remove the lock an interrupted update left (its update was found not to run any more)."""
    if backend is not None:
        locks = backend.locks()
        if locks:
            stack.cancel()
        return [f"removed the lock left by an interrupted update ({lock.describe()})" for lock in locks]
    history = stack.history(page_size=1)
    if history and history[0].result == "in-progress":
        stack.cancel()
        return [f"cancelled the update in progress since {history[0].start_time} (the backend's record)"]
    return []


def pending_operations(stack: auto.Stack) -> list[str]:
    """`<operation> <urn>` of each operation the last deployment left pending."""
    deployment = stack.export_stack().deployment or {}
    return [
        f"{operation.get('type', '?')} {operation.get('resource', {}).get('urn', '?')}"
        for operation in deployment.get("pending_operations") or []
    ]


def say(message: str) -> None:
    print(f"recover: {message}", flush=True)


def recover(name: str, work_dir: Path | None) -> None:
    """The steps of the module's docstring; raises auto.CommandError when one of them fails."""
    backend = file_backend(name, work_dir)
    if backend is not None:
        refuse_while_running(backend)
        for line in repair_writes(backend):
            say(line)
    stack = open_stack(name, work_dir)
    for line in release_lock(stack, backend):
        say(line)
    pending = pending_operations(stack)
    for line in pending:
        say(f"pending from the interrupted update: {line}")
    creates = any(line.startswith("creating ") for line in pending)
    say("refreshing: the state takes what really exists" + (", pending creates cleared" if creates else ""))
    stack.refresh(clear_pending_creates=creates or None, on_output=print, on_error=print)
    say("up: what is missing is made, what a kill left half-made is set aside and rebuilt")
    stack.up(on_output=print, on_error=print)
    preview = stack.preview(expect_no_changes=True)
    same = dict(preview.change_summary).get(auto.OpType.SAME, 0)
    say(f"stack '{stack.name}' matches its code again: {same} resources, a preview shows no change")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/recover", description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("stack", help="the Pulumi stack, e.g. dev")
    parser.add_argument("--work-dir", type=Path, help="the project directory (default: this clone)")
    args = parser.parse_args(argv)
    try:
        recover(args.stack, args.work_dir)
    except (ToolError, UpdateRunning) as error:
        print(f"recover: {error}", file=sys.stderr)
        return 2
    except auto.CommandError as error:
        print(f"recover: {last_line(str(error))}\n{error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
