"""Helpers the tests share: free ports, a state directory the postgres OS user can reach, processes."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, never the same twice in one test run."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in _handed_out and port + 1 not in _handed_out:
            _handed_out.add(port)
            return port


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
        subprocess.run(["rm", "-rf", str(path)], check=False)


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def processes_under(path: Path) -> list[str]:
    """Command lines of live processes that mention `path` (servers started for a test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split(") ", 1)[-1]
        except OSError:
            continue
        if str(path) in cmdline and not state.startswith("Z"):
            found.append(cmdline.strip())
    return found
