"""The external platform's checks of an existing server, with a local primary standing in for Supabase or RDS."""

from __future__ import annotations

import time
from typing import Any

import pytest

from components.connection import LOOPBACK
from components.kind import Observed, ProviderError
from components.platform.external.platform import required_extensions
from components.platform.external.postgres import (
    MINIMUM_VERSION_NUM,
    ExternalPostgresKind,
    ExternalPostgresSpec,
    ExternalPostgresStatus,
    inspect,
)
from testbed.support import free_port
from tests.integration.conftest import DATABASE, Primary

UNREACHABLE_PASSWORD = "it-Never-Shown-0123"


def checked(dsn: str, **overrides: Any) -> ExternalPostgresSpec:
    """The spec the external platform declares for a server at `dsn`."""
    return ExternalPostgresSpec(dsn=dsn, **{"required_extensions": required_extensions(), **overrides})


def refusal(spec: ExternalPostgresSpec) -> str:
    with pytest.raises(ProviderError) as raised:
        inspect(spec)
    return str(raised.value)


def test_inspect_reports_the_version_of_a_reachable_server(primary: Primary) -> None:
    found = inspect(checked(primary.dsn))
    assert found == ExternalPostgresStatus(
        server_version=primary.scalar("SHOW server_version"),
        server_version_num=int(primary.scalar("SHOW server_version_num")),
        reachable=True,
    )
    assert (found.server_version_num or 0) >= MINIMUM_VERSION_NUM


def test_every_required_extension_is_offered_by_our_own_server_image(primary: Primary) -> None:
    """The local primary is what dev stacks test against: it must pass the check a managed server gets."""
    assert inspect(checked(primary.dsn)).reachable is True


def test_a_missing_extension_is_named(primary: Primary) -> None:
    message = refusal(checked(primary.dsn, required_extensions=["pg_trgm", "no_such_ext"]))
    assert "no_such_ext" in message
    assert "pg_trgm" not in message, "an extension the server offers is reported missing"


def test_a_server_older_than_the_minimum_is_refused(primary: Primary) -> None:
    message = refusal(checked(primary.dsn, minimum_version_num=990000))
    assert "needs 99 or newer" in message
    assert primary.scalar("SHOW server_version") in message


def test_an_unreachable_server_is_a_quick_clear_error_without_its_password() -> None:
    port = free_port()  # nothing listens there
    spec = checked(f"postgresql://app:{UNREACHABLE_PASSWORD}@{LOOPBACK}:{port}/{DATABASE}")
    started = time.monotonic()
    message = refusal(spec)
    assert time.monotonic() - started < 15
    assert message.startswith(f"cannot reach the external PostgreSQL at {LOOPBACK}")
    assert str(port) in message
    assert UNREACHABLE_PASSWORD not in message


def test_a_wrong_password_is_a_clear_error_without_the_password(primary: Primary) -> None:
    wrong = "it-Wrong-Pass-0123"
    message = refusal(checked(f"postgresql://postgres:{wrong}@{LOOPBACK}:{primary.port}/{DATABASE}"))
    assert "password authentication failed" in message
    assert wrong not in message


def test_kind_adopts_observes_and_forgets_without_touching_the_server(primary: Primary) -> None:
    kind, spec = ExternalPostgresKind(), checked(primary.dsn)
    resource_id, outputs = kind.create(spec)
    assert resource_id == f"{LOOPBACK}:{primary.port}/{DATABASE}"
    assert outputs.reachable is True
    assert kind.observe(resource_id, spec) == Observed({}, outputs)
    assert kind.update(resource_id, {**spec.model_dump(by_alias=True), **outputs.wire()}, spec) == outputs
    assert kind.drifted(outputs, spec) == []

    gone = spec.model_copy(update={"dsn": f"postgresql://postgres@{LOOPBACK}:{free_port()}/{DATABASE}"})
    observed = kind.observe(resource_id, gone)
    assert observed == Observed({}, ExternalPostgresStatus(reachable=False))
    assert kind.drifted(observed.status, gone) == ["reachable"]

    kind.delete(resource_id, spec)
    assert primary.scalar("SELECT 1") == 1, "delete of an external server must leave it alone"


def test_the_dsn_role_needs_bypassrls_createrole_and_create_but_no_superuser(primary: Primary) -> None:
    """Supabase's postgres has them, and is no superuser: it passes; a role without them is named."""
    password = "it-Least-0123"
    with primary.connect() as conn:
        conn.execute(f"CREATE ROLE it_weak LOGIN PASSWORD '{password}'")
        conn.execute(f"CREATE ROLE it_least LOGIN NOSUPERUSER CREATEROLE BYPASSRLS PASSWORD '{password}'")
        conn.execute(f"GRANT CREATE ON DATABASE {DATABASE} TO it_least")
    try:
        weak = f"postgresql://it_weak:{password}@{LOOPBACK}:{primary.port}/{DATABASE}"
        message = refusal(checked(weak))
        assert "it_weak" in message and "BYPASSRLS, CREATEROLE, CREATE on the database" in message
        assert password not in message
        least = f"postgresql://it_least:{password}@{LOOPBACK}:{primary.port}/{DATABASE}"
        assert inspect(checked(least)).reachable is True
    finally:
        with primary.connect() as conn:
            conn.execute(f"REVOKE CREATE ON DATABASE {DATABASE} FROM it_least")
            conn.execute("DROP ROLE it_weak")
            conn.execute("DROP ROLE it_least")
