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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
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


#: What a server or tool of ours inherits from the environment: the rest (PGPASSWORD, PULUMI_* secrets,
#: the caller's PG* defaults) stays out of the processes that outlive us.
INHERITED_ENV = ("PATH", "LANG", "LANGUAGE", "TZ")


def server_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment: PATH, the locale and time zone of this host, and `extra`."""
    kept = {key: value for key, value in os.environ.items() if key in INHERITED_ENV or key.startswith("LC_")}
    return {"PATH": os.defpath, **kept, **(extra or {})}


def run(
    argv: Sequence[str],
    what: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 180,
    secret_input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command in a session of its own (so what it starts outlives us) with a clean environment; fail
    with its last words. `secret_input` is its standard input, through a pipe: never in a file a kill of
    this process could leave behind (the command reads it as /dev/stdin)."""
    stdin = secret_pipe(secret_input) if secret_input is not None else subprocess.DEVNULL
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=server_environment(env),
            start_new_session=True,
            stdin=stdin,
        )
    except subprocess.TimeoutExpired as error:
        raise ProviderError(f"{what} did not finish within {timeout:.0f} s") from error
    finally:
        if isinstance(stdin, int) and stdin != subprocess.DEVNULL:
            os.close(stdin)
    if result.returncode != 0:
        last_words = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ProviderError(f"{what} failed (exit {result.returncode}): {' / '.join(last_words)}")
    return result


def secret_pipe(content: str) -> int:
    """The read end of a pipe holding `content` (up to the pipe's buffer), openable as /dev/stdin by the
    service user: reopening a pipe through /proc checks its owner, which is whoever made it."""
    read_end, write_end = os.pipe()
    try:
        if running_as_root():
            user = pwd.getpwnam(SERVICE_USER)
            os.fchown(read_end, user.pw_uid, user.pw_gid)
        os.write(write_end, content.encode())
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return read_end


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
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)  # a copy a killed run left (these files hold passwords)
    if path.exists() and path.read_text() == content:
        return False
    temporary.write_text(content)
    temporary.chmod(0o600)
    give_to_service_user(temporary)
    temporary.replace(path)
    return True


def sync_directory(path: Path) -> None:
    """Make a rename inside `path` durable (the entry itself, not only the files it names)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass(frozen=True)
class LiveProcess:
    pid: int
    name: str
    cwd: str
    argv: tuple[str, ...]


def live_processes() -> Iterator[LiveProcess]:
    """Every process of this host that can be read now (others come and go while we look), zombies too."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "comm").read_text().strip()
            argv = tuple((entry / "cmdline").read_bytes().decode(errors="replace").split("\0"))
        except OSError:
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            cwd = ""  # a zombie, or another user's process when we are not root
        yield LiveProcess(int(entry.name), name, cwd, argv)


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
