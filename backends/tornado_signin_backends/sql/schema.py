"""The table of the ``sql`` store, and how a record maps to its row and back."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Double, MetaData, String, Table, Text
from sqlalchemy.dialects.mysql import VARBINARY
from sqlalchemy.types import TypeDecorator

from tornado_signin.store import MAX_SUB_LENGTH, TokenRecord

__all__ = ["SUPPORTED_DIALECTS", "MYSQL_DIALECTS", "define_table", "incoming_row", "record_from_row"]

SUPPORTED_DIALECTS = ("sqlite", "postgresql", "mysql", "mariadb")
MYSQL_DIALECTS = ("mysql", "mariadb")


class _Sub(TypeDecorator[str]):
    """``sub`` as VARCHAR(255), or as UTF-8 VARBINARY on MySQL/MariaDB (exact, case- and space-sensitive).

    The usual MySQL text collations are case-insensitive or pad spaces, which
    would make two distinct subs collide.
    """

    impl = String(MAX_SUB_LENGTH)
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name in MYSQL_DIALECTS:
            return dialect.type_descriptor(VARBINARY(4 * MAX_SUB_LENGTH))
        return dialect.type_descriptor(String(MAX_SUB_LENGTH))

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is not None and dialect.name in MYSQL_DIALECTS:
            return value.encode("utf-8")
        return value

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value).decode("utf-8")
        return value


def define_table(name: str) -> Table:
    """Return the store's table ``name``: one row per ``sub``; times as DOUBLE, scopes space-joined, tokens as TEXT.

    Example::

        table = define_table("tornado_signin_tokens")
        table.metadata.create_all(engine)
    """
    return Table(
        name,
        MetaData(),
        Column("sub", _Sub(), primary_key=True),
        Column("email", Text),
        Column("refresh_token", Text),
        Column("refresh_token_issued_at", Double),
        Column("access_token", Text),
        Column("access_token_expiry", Double),
        Column("access_token_issued_at", Double),
        Column("scopes", Text),
        Column("created_at", Double),
        Column("updated_at", Double),
        Column("revoked_at", Double),
        # Added after the first release: an existing table gets them on first use (the store adds missing columns).
        Column("refresh_token_expires_at", Double),
        Column("disabled_at", Double),
        Column("enabled_at", Double),
        Column("security_event", Text),
        Column("security_event_at", Double),
        mysql_charset="utf8mb4",
        mysql_engine="InnoDB",
    )


def incoming_row(record: TokenRecord, now: float) -> dict[str, Any]:
    """Return the row to insert for ``record``: what a save over nothing leaves (see merge_records).

    A token that does not count (empty) is NULL with its times, so the merge
    reads "incoming has a refresh token" as ``refresh_token IS NOT NULL``.
    """
    has_refresh = bool(record.refresh_token)
    has_access = bool(record.access_token)
    return {
        "sub": record.sub,
        "email": record.email or None,
        "refresh_token": record.refresh_token if has_refresh else None,
        "refresh_token_issued_at": record.refresh_token_issued_at if has_refresh else None,
        "access_token": record.access_token if has_access else None,
        "access_token_expiry": record.access_token_expiry if has_access else None,
        "access_token_issued_at": record.access_token_issued_at if has_access else None,
        "scopes": " ".join(record.scopes) if has_access and record.scopes else None,
        "created_at": record.created_at or now,
        "updated_at": now,
        "revoked_at": record.revoked_at,
        "refresh_token_expires_at": record.refresh_token_expires_at if has_refresh else None,
        "disabled_at": record.disabled_at,
        "enabled_at": record.enabled_at,
        "security_event": record.security_event or None,
        "security_event_at": record.security_event_at if record.security_event else None,
    }


def record_from_row(row: Any) -> TokenRecord:
    """Return the record of a table row: the table's columns in its order (what ``select(table)`` and
    ``RETURNING`` of every column give).

    The row is unpacked as a tuple: reading its 16 columns by name cost twice
    the rest of the conversion (SQLite, per record: 6.3 -> 2.6 us), and the
    bulk job converts three rows per refreshed user.
    """
    (sub, email, refresh_token, refresh_token_issued_at, access_token, access_token_expiry, access_token_issued_at,
     scopes, created_at, updated_at, revoked_at, refresh_token_expires_at, disabled_at, enabled_at, security_event,
     security_event_at) = row
    return TokenRecord(
        sub=sub,
        email=email,
        refresh_token=refresh_token,
        refresh_token_issued_at=refresh_token_issued_at,
        access_token=access_token,
        access_token_expiry=access_token_expiry,
        access_token_issued_at=access_token_issued_at,
        scopes=tuple(scopes.split()) if scopes else (),
        created_at=created_at,
        updated_at=updated_at,
        revoked_at=revoked_at,
        refresh_token_expires_at=refresh_token_expires_at,
        disabled_at=disabled_at,
        enabled_at=enabled_at,
        security_event=security_event,
        security_event_at=security_event_at,
    )
