"""Runs one HA node's Patroni, and fences the node's PostgreSQL the moment Patroni dies.

A PostgreSQL whose Patroni is gone keeps running as it was: a primary keeps taking writes while the
others, seeing its leader lock expire, promote one of themselves (two writable primaries). Patroni's
answer is a hardware watchdog that resets the machine; on a shared host we stop the orphan instead
(`pg_ctl stop -m immediate`), then start Patroni again, as systemd's Restart= would. Copied into the
node's directory and run by the system's python3 as the postgres OS user: standard library only.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

RESTART_DELAY_SECONDS = 1.0


def postmaster_alive(data_dir: Path) -> bool:
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


def fence(data_dir: Path, pg_ctl: str) -> None:
    if postmaster_alive(data_dir):
        print(f"supervise: Patroni is gone: stopping PostgreSQL in {data_dir}", flush=True)
        subprocess.run([pg_ctl, "stop", "-D", str(data_dir), "-m", "immediate", "-w", "-t", "60"], check=False)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--pg-ctl", required=True)
    parser.add_argument("--patroni-pidfile", required=True, type=Path)
    args = parser.parse_args()
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # Patroni stops PostgreSQL and hands its lock on

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    while not stopping:
        child = subprocess.Popen(["patroni", args.config])
        args.patroni_pidfile.write_text(f"{child.pid}\n")
        code = child.wait()
        if not stopping:
            print(f"supervise: Patroni exited with {code}", flush=True)
            fence(args.data_dir, args.pg_ctl)
            time.sleep(RESTART_DELAY_SECONDS)
    args.patroni_pidfile.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
