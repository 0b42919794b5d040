"""Check, before starting local servers, that the ports the stack wants are free on this host."""

from __future__ import annotations

import errno
import socket
from collections.abc import Collection

from config.errors import ConfigError, Problem, show_value
from config.settings import StackSettings


def check_host_ports(settings: StackSettings, host: str, owned_ports: Collection[int]) -> None:
    """Raise ConfigError naming every configured port that another process holds on `host` (where the
    platform's servers will listen).

    Ports in `owned_ports` are held by this stack's own running servers and are skipped. On platform
    external no server of the stack listens here, so nothing is checked.
    """
    if settings.platform == "external":
        return
    problems = [
        Problem(key, show_value(port), reason)
        for key, port in settings.all_ports.items()
        if port not in owned_ports and (reason := _why_not_free(host, key, port)) is not None
    ]
    if problems:
        raise ConfigError(settings.stack, problems)


def _why_not_free(host: str, key: str, port: int) -> str | None:
    """None if `port` can be bound on `host`, else what is wrong and what to do."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: a port left in TIME_WAIT by a server that just stopped is free to use
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            setting = key.split("+", 1)[0]
            if error.errno == errno.EADDRINUSE:
                return (
                    f"port {port} on {host} is already in use by another process; "
                    f"stop that process or set {setting} to a free port"
                )
            return f"port {port} on {host} cannot be bound ({error.strerror}); set {setting} to another port"
    return None
