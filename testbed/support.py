"""Free ports, a state directory the postgres OS user can reach, processes, copies of the program."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml

from components.connection import LOOPBACK

_handed_out: set[int] = set()
_random = random.Random()  # its own: a test plugin that seeds `random` would make every run pick the same ports


def _ephemeral_floor() -> int:
    """The kernel hands ports from here up to outgoing connections (clients of the servers under test)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


#: Parallel test workers (pytest-xdist) take ports from their own blocks, so two never pick the same one;
#: the last ports of a block are left for runs of consecutive ports that start in it.
PORT_BLOCK, RUN_ROOM = 1000, 32


def _worker() -> tuple[int, int]:
    """This test worker's index and the number of workers (0 and 1 without pytest-xdist)."""
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    return index, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def free_port(run: int = 1) -> int:
    """A TCP port free on 127.0.0.1 now (with the `run - 1` after it), never the same twice in one test run.

    Chosen below the ephemeral range: a port the kernel picked with bind(0) is in that range, and any
    client connection opened before the server starts may take it (a CI run lost a stack that way).
    """
    floor = _ephemeral_floor()
    ceiling = floor - 2 if floor > 12000 else 65000
    index, workers = _worker()
    if run > RUN_ROOM:
        raise ValueError(f"a run of {run} ports does not fit the room left at the end of a block ({RUN_ROOM})")
    while True:
        port = _random.randrange(10000, ceiling)
        if (port // PORT_BLOCK) % workers != index or port % PORT_BLOCK >= PORT_BLOCK - RUN_ROOM:
            continue
        ports = range(port - 1, port + run + 1)
        if any(taken in _handed_out for taken in ports):
            continue
        if all(_bindable(candidate) for candidate in range(port, port + run)):
            _handed_out.update(range(port, port + run))
            return port


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return not listening(port)


def free_ports(count: int) -> list[int]:
    return [free_port() for _ in range(count)]


@contextmanager
def reachable_state_dir(prefix: str = "thorbis-test-") -> Iterator[Path]:
    """A directory the postgres OS user can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("THORBIS_TEST_TMP", "/tmp")))
    path.chmod(0o755)
    try:
        yield path
    finally:
        kill_processes_under(path)  # a test that failed before its destroy must not leave servers running
        subprocess.run(["rm", "-rf", str(path)], check=False)


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((LOOPBACK, port)) == 0


def processes_under(path: Path) -> list[str]:
    """Command lines of live processes that mention `path` or run in it (servers started for a test)."""
    return [cmdline for _, cmdline in live_processes_under(path)]


def live_processes_under(path: Path) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split(") ", 1)[-1]
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if (str(path) in cmdline or cwd.startswith(str(path))) and not state.startswith("Z"):
            found.append((int(entry.name), cmdline.strip()))
    return found


def kill_processes_under(path: Path) -> None:
    for pid, _ in live_processes_under(path):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: What a copy of the program needs to run as its own Pulumi project.
PROJECT_PARTS = ("Pulumi.yaml", "__main__.py", "components", "config", "provider", "sql")
#: Data files of objects that read the tables (file -> its list of them): emptied with sql/schema.
OBJECTS_ON_TABLES = {
    "reporting.yaml": "materialized_views",
    "maintenance.yaml": "procedures",
    "jobs.yaml": "jobs",
    "search.yaml": "searches",
}


def copy_project(destination: Path, parts: tuple[str, ...] = PROJECT_PARTS) -> Path:
    """A copy of the program (sharing the virtualenv), so a test or a benchmark can change its data, or
    use stack names of ours, without touching the working tree."""
    destination.mkdir(parents=True)
    for part in parts:
        source = PROJECT_ROOT / part
        if source.is_dir():
            shutil.copytree(source, destination / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, destination / part)
    (destination / ".venv").symlink_to(PROJECT_ROOT / ".venv")
    return destination


def copy_project_without_tables(destination: Path) -> Path:
    """The program with an empty sql/schema and nothing that reads tables: servers, roles, schemas and
    extensions only (copy sql/ back to declare the rest)."""
    copy_project(destination)
    for schema_file in (destination / "sql" / "schema").glob("*.yaml"):
        schema_file.unlink()
    for name, objects in OBJECTS_ON_TABLES.items():
        content = yaml.safe_load((destination / "sql" / name).read_text())
        (destination / "sql" / name).write_text(yaml.safe_dump({**content, objects: []}, sort_keys=False))
    return destination


def schema_subset(names: list[str], plain: tuple[str, ...] = ()) -> dict[str, Any]:
    """The tables `names` of sql/schema as one file's content, with their references to tables outside the
    subset left out (the columns stay, as plain columns), and without `partition` for those in `plain`:
    a small program of real tables, for tests that need a few of them and not the cost of all."""
    tables = [
        table
        for schema_file in sorted((PROJECT_ROOT / "sql" / "schema").glob("*.yaml"))
        for table in yaml.safe_load(schema_file.read_text())["tables"]
        if table["name"] in names
    ]
    kept = {table["name"] for table in tables}
    for table in tables:
        for column in table["columns"]:
            if "references" in column and column["references"]["table"] not in kept:
                del column["references"]
        table["foreign_keys"] = [key for key in table.get("foreign_keys", []) if key["references"]["table"] in kept]
        if table["name"] in plain:
            table.pop("partition", None)
    return {"tables": tables}


def write_schema(project: Path, content: dict[str, Any], name: str = "subset.yaml") -> None:
    (project / "sql" / "schema" / name).write_text(yaml.safe_dump(content, sort_keys=False))


# --- killing a process tree at a deterministic point -------------------------------------------------


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def stop_tree(root: int) -> dict[int, str]:
    """SIGSTOP a process and all its descendants, each stopped before its children are looked for, so
    that none forks or exits unseen. Returns their command lines by pid."""
    frozen: dict[int, str] = {}
    pending = {root}
    while pending:
        for pid in pending:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                frozen[pid] = command_line(pid)
        numbers = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
        pending = {pid for pid in numbers if pid not in frozen and parent_of(pid) in frozen}
    return frozen


def signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signum)


def kill_tree(root: int) -> list[str]:
    """SIGKILL a process and all its descendants at once, as an OOM killer or a CI timeout would.
    Returns their command lines."""
    frozen = stop_tree(root)
    signal_all(frozen, signal.SIGKILL)
    return list(frozen.values())


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def stop_when_seen(matches: Callable[[str], bool], running: subprocess.Popen[bytes], timeout: float = 300) -> int:
    """Poll until a process whose command line `matches` exists, while `running` has not ended, and stop
    it there (SIGSTOP): the kill point of a fault test, reached by the work itself, not by a sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and entry.name != str(os.getpid()) and matches(command_line(int(entry.name))):
                with suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGSTOP)
                    return int(entry.name)
        if running.poll() is not None:
            raise AssertionError(f"the command ended (exit {running.returncode}) before the kill point")
        time.sleep(0.01)
    raise AssertionError(f"no matching process within {timeout:.0f} s")
