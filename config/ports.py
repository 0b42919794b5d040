"""Check, before starting local servers, that the ports the stack wants are free on this host."""

from __future__ import annotations

import errno
import socket
from collections.abc import Collection

from config.errors import ConfigError, Problem, show_value
from config.settings import StackSettings

HOST = "127.0.0.1"


def check_host_ports(settings: StackSettings, owned_ports: Collection[int]) -> None:
    """Raise ConfigError naming every configured port that another process holds on 127.0.0.1.

    Ports in `owned_ports` are held by this stack's own running servers and are skipped. On platform
    external no server of the stack listens here, so nothing is checked.
    """
    if settings.platform == "external":
        return
    problems = [
        Problem(key, show_value(port), reason)
        for key, port in settings.all_ports.items()
        if port not in owned_ports and (reason := _why_not_free(key, port)) is not None
    ]
    if problems:
        raise ConfigError(settings.stack, problems)


def _why_not_free(key: str, port: int) -> str | None:
    """None if `port` can be bound on 127.0.0.1, else what is wrong and what to do."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: a port left in TIME_WAIT by a server that just stopped is free to use
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as error:
            setting = key.split("+", 1)[0]
            if error.errno == errno.EADDRINUSE:
                return (
                    f"port {port} on {HOST} is already in use by another process; "
                    f"stop that process or set {setting} to a free port"
                )
            return f"port {port} on {HOST} cannot be bound ({error.strerror}); set {setting} to another port"
    return None
