"""SCRAM-SHA-256 verifiers of passwords, computed here so that a password never reaches the server.

`ALTER ROLE ... PASSWORD '<verifier>'` stores an RFC 5803 secret as given: the server, its log,
pg_stat_activity and pg_stat_statements see the verifier, never the password. Every role a stack sets a
password for goes through `scram_verifier`: the database layer's roles and the platform's own (postgres,
replicator, PgBouncer's auth user).

Hand-written: libpq's PQencryptPasswordConn picks its own salt, and a kind's observe must recompute the
verifier with the salt and iterations the server stored to tell whether the password is still the
declared one. Standard library only, so that the docker platform's init script can run it as a program
(`python3 scram.py < password` prints a verifier).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import stringprep
import sys
import unicodedata
from collections.abc import Callable

SCRAM_ITERATIONS = 4096

_SASLPREP_PROHIBITED: tuple[Callable[[str], bool], ...] = (
    stringprep.in_table_c12,
    stringprep.in_table_c21,
    stringprep.in_table_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
    stringprep.in_table_a1,
)


def saslprep(password: str) -> str:
    """RFC 4013 SASLprep as PostgreSQL applies it: ASCII is kept as is, and so is a password it rejects."""
    if password.isascii():
        return password
    mapped = "".join(
        " " if stringprep.in_table_c12(char) else char for char in password if not stringprep.in_table_b1(char)
    )
    prepared = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    if any(check(char) for char in prepared for check in _SASLPREP_PROHIBITED):
        return password
    if any(stringprep.in_table_d1(char) for char in prepared) and (
        any(stringprep.in_table_d2(char) for char in prepared)
        or not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1]))
    ):
        return password
    return prepared


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The RFC 5803 SCRAM-SHA-256 secret `ALTER ROLE ... PASSWORD` stores as given (random 16-byte salt)."""
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


_SCRAM_SECRET = re.compile(r"SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+")


def is_scram_secret(stored: str | None) -> bool:
    return stored is not None and _SCRAM_SECRET.fullmatch(stored) is not None


def is_verifier_of(stored: str | None, password: str) -> bool:
    """Whether the stored secret is the SCRAM verifier of `password` (with the salt and iterations stored)."""
    match = _SCRAM_SECRET.fullmatch(stored or "")
    if match is None or stored is None:
        return False
    expected = scram_verifier(password, base64.b64decode(match[2]), int(match[1]))
    return hmac.compare_digest(expected, stored)


if __name__ == "__main__":  # the docker platform's init script: the password on stdin, its verifier out
    print(scram_verifier(sys.stdin.read().rstrip("\n")))
