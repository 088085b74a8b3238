"""How the ``sql`` store's failures reach the caller: every SQLAlchemy or OS error as a StorageError."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError

from tornado_signin.errors import StorageError

__all__ = ["translate", "is_transient"]


@contextlib.contextmanager
def translate(label: str, operation: str) -> Iterator[None]:
    """Raise every SQLAlchemy/OS error of the block as StorageError, naming ``label`` and ``operation``.

    The StorageError is chained to the error, whose message carries no
    parameter (the engine hides them) — except a value that did not convert
    to its column's type (a StatementError around the converter's error, which
    quotes the value): that one is not chained, so no value reaches a log.

    Example::

        with translate("sqlite:///tokens.db table t", "save a record"):
            conn.execute(upsert, values)
    """
    try:
        yield
    except (SQLAlchemyError, OSError) as exc:
        orig = getattr(exc, "orig", None)
        cause = type(orig or exc).__name__
        message = f"SQL token store {label}: cannot {operation} ({cause})"
        if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
            raise StorageError(message + ": a value does not convert to its column's type") from None
        raise StorageError(message) from exc


def is_transient(exc: DBAPIError) -> bool:
    """Return True for errors after which the rolled-back transaction may simply be retried.

    Serialization failures and deadlocks (PostgreSQL), lock wait timeouts and
    deadlocks (MySQL/MariaDB), "database is locked" (SQLite).
    """
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in ("40001", "40P01"):  # psycopg: serialization failure, deadlock
        return True
    args = getattr(orig, "args", ())
    if args and args[0] in (1205, 1213):  # MySQL: lock wait timeout, deadlock
        return True
    return "database is locked" in str(orig)
