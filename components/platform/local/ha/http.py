"""Small JSON-over-HTTP calls to the services of a HA cluster on this host (etcd's v3 gateway, Patroni's
REST API): the standard library's client, short timeouts, errors as ProviderError."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

from components.kind import ProviderError

HOST = "127.0.0.1"


def call(
    port: int,
    path: str,
    method: str = "GET",
    body: Any = None,
    timeout: float = 3,
    auth: tuple[str, str] | None = None,
) -> tuple[int, Any]:
    """The status and decoded JSON answer (None when empty or not JSON) of one request to 127.0.0.1:port."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{HOST}:{port}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, decode(response.read())
    except urllib.error.HTTPError as error:
        return error.code, decode(error.read())
    except (OSError, urllib.error.URLError) as error:
        raise ProviderError(f"{method} http://{HOST}:{port}{path}: {error}") from error


def decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


def status_of(port: int, path: str, timeout: float = 2) -> int | None:
    """The HTTP status of a GET, or None when nothing answers."""
    try:
        return call(port, path, timeout=timeout)[0]
    except ProviderError:
        return None
