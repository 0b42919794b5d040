"""Running Debian's server binaries on this host: as the `postgres` OS user when we are root (initdb,
postgres and pgbouncer refuse to run as root), detached from the provider so servers outlive it."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path

from components.connection import LOOPBACK
from components.kind import ProviderError

SERVICE_USER = "postgres"


@cache
def postgres_bindir() -> Path:
    """The newest PostgreSQL server binaries Debian installed (override with THORBIS_PG_BINDIR)."""
    if configured := os.environ.get("THORBIS_PG_BINDIR"):
        return Path(configured)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    if not candidates:
        raise ProviderError("no PostgreSQL server binaries under /usr/lib/postgresql: run scripts/install-deps")
    return candidates[-1].parent


def pg_tool(name: str) -> str:
    return str(postgres_bindir() / name)


def running_as_root() -> bool:
    return os.geteuid() == 0


def as_service_user(argv: Sequence[str]) -> list[str]:
    return ["runuser", "-u", SERVICE_USER, "--", *argv] if running_as_root() else list(argv)


def run(
    argv: Sequence[str], what: str, *, env: Mapping[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run a command in a session of its own (so what it starts outlives us); fail with its last words."""
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as error:
        raise ProviderError(f"{what} did not finish within {timeout:.0f} s") from error
    if result.returncode != 0:
        last_words = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ProviderError(f"{what} failed (exit {result.returncode}): {' / '.join(last_words)}")
    return result


def give_to_service_user(path: Path) -> None:
    if running_as_root():
        user = pwd.getpwnam(SERVICE_USER)
        os.chown(path, user.pw_uid, user.pw_gid)


def make_private_dir(path: Path) -> None:
    """A directory only the service user can enter, whose parents it can traverse."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    give_to_service_user(path)
    if running_as_root():
        service_uid = pwd.getpwnam(SERVICE_USER).pw_uid
        for parent in path.parents:
            status = parent.stat()
            if not (status.st_mode & 0o001 or (status.st_uid == service_uid and status.st_mode & 0o100)):
                raise ProviderError(
                    f"the {SERVICE_USER} OS user cannot reach {path}: {parent} is not searchable by others; "
                    "set thorbis:stateDir under a directory it can traverse"
                )


def write_private_file(path: Path, content: str) -> bool:
    """Write a file readable by the service user only; return whether its content changed."""
    if path.exists() and path.read_text() == content:
        return False
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(content)
    temporary.chmod(0o600)
    give_to_service_user(temporary)
    temporary.replace(path)
    return True


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        raise ProviderError(f"could not remove {path}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    state = Path(f"/proc/{pid}/stat")
    return not (state.exists() and state.read_text().split(") ", 1)[-1].startswith("Z"))


def read_pid(pidfile: Path) -> int | None:
    """The pid in a pidfile if that process is alive."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def terminate(pid: int, what: str, timeout: float = 30) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    wait_until(lambda: not pid_alive(pid), timeout, f"{what} (pid {pid}) to stop")


def port_open(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) == 0


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ProviderError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
