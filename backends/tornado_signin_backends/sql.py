"""``sql``: a token store in one SQL table, through SQLAlchemy 2.x Core.

Supported databases: SQLite (the demo default), PostgreSQL and MySQL/MariaDB.
Config (``store:`` section)::

    store:
      backend: sql
      url: postgresql+psycopg://app@db.internal/signin    # any SQLAlchemy URL
      table: tornado_signin_tokens                       # optional
      create_table: true                                 # optional
      engine_options: {pool_size: 5}                     # optional, passed to create_engine

The table (one row per ``sub``; times as DOUBLE, scopes as space-joined text,
tokens as TEXT holding the core's ciphertext) is created on first use when
``create_table`` is true, or explicitly with :meth:`SQLTokenStore.create_schema`
(what a deployment without DDL rights at runtime runs once, e.g. from a
migration job)::

    SQLTokenStore(url=..., create_table=False).create_schema()

A table an older release created lacks the later nullable columns
(``refresh_token_expires_at``, ``disabled_at``, ``enabled_at``,
``security_event``, ``security_event_at``): the same first use (or
``create_schema()``) adds them with ``ALTER TABLE … ADD COLUMN``.

The merge of :meth:`SQLTokenStore.save` is done by the database in one
statement: ``INSERT … ON CONFLICT (sub) DO UPDATE SET col = CASE … END`` on
SQLite and PostgreSQL, ``INSERT … ON DUPLICATE KEY UPDATE col = CASE … END`` on
MySQL/MariaDB, whose CASEs implement :func:`tornado_signin.store.merge_records`.
MySQL applies those assignments left to right, so a later CASE reading a
column already assigned would see the new value: the issue-time columns that
the conditions read are therefore assigned last. The merged row comes back
from the statement itself (``RETURNING``: SQLite >= 3.35, PostgreSQL) or, on
MySQL/MariaDB, is read back in the same transaction while the row lock is held. Deadlocks and lock
timeouts (possible on MySQL under concurrent upserts) and SQLite "database is
locked" are retried a few times; the statement is idempotent per transaction.

``save`` is the hot path of a login, and Core's per-execution work cost as
much CPU as everything else in it (measured on a SQLite file: ~105 µs per save
through Core, ~60 µs without; PostgreSQL ~410 µs and ~290 µs). So ``save``
alone runs its statements as strings compiled once for the engine's dialect,
on a DBAPI connection checked out of the engine's pool (pre-pinged like any
other), converting values as the column types would; errors are wrapped as
Core wraps them (SQLAlchemy's ``DBAPIError`` classes, parameters hidden), so
retries and messages are the same. Everything else goes through Core. Engine
execution events (``before_cursor_execute``, ``handle_error`` …) do not see
``save``'s statements; pool events do.

A new SQLite database file is created 0600, whatever the umask (SQLite
itself would make it 0644), and SQLite gives its ``-wal`` and ``-shm`` files
the database's mode: no other local user reads an email or a ciphertext. An
existing file that others can read is used with a warning.

Concurrency: one engine per store, shared by all threads (``pool_pre_ping``
on). SQLite files run in WAL mode with a 30 s busy timeout, so threads and
processes can write the same file. An in-memory SQLite URL uses one shared
connection guarded by a lock (one process only, lost at exit).

SQLite has one writer at a time, and a writer that finds the file locked
waits in SQLite's busy handler, which polls: it sleeps 1, 2, 5, 10 … up to
100 ms between tries and does not wake when the lock is released. With
several server processes on one file (``serve --processes N``) the writers
then spend their time asleep: two processes logged in fewer users per second
than one. So the writes of a store on a SQLite file queue instead: threads of
a process on an in-process lock, then the processes on an exclusive
``fcntl.flock`` of ``<database file>.lock`` (created next to the database,
mode 0600, never deleted), held around each write transaction and released
after its commit. The kernel wakes the next waiting process at once. Readers
take neither (WAL readers do not block the writer, nor it them). Other
programs writing the file without the lock are still waited for by the busy
handler. The lock is per host, like SQLite's own locking (not for network
file systems). A writer stopped while holding it (SIGSTOP, a debugger) holds
up the other processes' writes until it resumes or exits (the kernel releases
the lock of a dead process), where SQLite alone would have failed them after
the busy timeout.

On MySQL/MariaDB the ``sub`` column is ``VARBINARY`` (UTF-8 bytes): the usual
text collations are case-insensitive or pad spaces, which would make two
distinct subs collide.

Every SQLAlchemy or OS error is raised as
:class:`~tornado_signin.errors.StorageError` chained to it; statement
parameters are hidden from SQLAlchemy's messages (``hide_parameters``) and no
message carries a token value.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import threading
import time
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from sqlalchemy import (
    Column,
    Double,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    create_engine,
    event,
    func,
    inspect,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.mysql import BINARY, VARBINARY
from sqlalchemy.engine import Dialect, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    MultipleResultsFound,
    NoResultFound,
    NoSuchModuleError,
    SQLAlchemyError,
    StatementError,
)
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

from tornado_signin.errors import ConfigError, StorageError
from tornado_signin.store import MAX_SUB_LENGTH, TokenRecord, TokenStore

from ._common import check_sub, is_valid_sub

__all__ = ["SQLTokenStore", "DEFAULT_TABLE"]

log = logging.getLogger(__name__)

DEFAULT_TABLE = "tornado_signin_tokens"

_SUPPORTED_DIALECTS = ("sqlite", "postgresql", "mysql", "mariadb")
_MYSQL_DIALECTS = ("mysql", "mariadb")
_SQLITE_BUSY_TIMEOUT = 30.0
_MAX_ATTEMPTS = 6
_PAGE_SIZE = 500

T = TypeVar("T")


class _Sub(TypeDecorator):
    """``sub`` as VARCHAR(255), or as UTF-8 VARBINARY on MySQL/MariaDB (exact, case- and space-sensitive)."""

    impl = String(MAX_SUB_LENGTH)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name in _MYSQL_DIALECTS:
            return dialect.type_descriptor(VARBINARY(4 * MAX_SUB_LENGTH))
        return dialect.type_descriptor(String(MAX_SUB_LENGTH))

    def process_bind_param(self, value, dialect):
        if value is not None and dialect.name in _MYSQL_DIALECTS:
            return value.encode("utf-8")
        return value

    def process_result_value(self, value, dialect):
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value).decode("utf-8")
        return value


def _define_table(name: str) -> Table:
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
        # Added after the first release: an existing table gets them on first use (_add_missing_columns).
        Column("refresh_token_expires_at", Double),
        Column("disabled_at", Double),
        Column("enabled_at", Double),
        Column("security_event", Text),
        Column("security_event_at", Double),
        mysql_charset="utf8mb4",
        mysql_engine="InnoDB",
    )


#: A row of the table as the DBAPI path of save() returns it (same attributes as a Core row).
_Row = namedtuple("_Row", [column.name for column in _define_table("_").c])  # type: ignore[misc]


class _RawStatement:
    """A Core statement compiled once for ``dialect``, to run on a DBAPI cursor without Core's per-call work.

    :meth:`parameters` converts values exactly as the bind types would (the
    type's own processors, e.g. ``_Sub`` to UTF-8 bytes on MySQL, ``Double``
    through ``float`` on SQLite) and orders them for a positional paramstyle
    (qmark, format) or keys them for a named one (pyformat). :meth:`one`
    fetches the single result row and converts it as the result types would
    (``sub`` bytes to text on MySQL); ``columns`` are the statement's result
    columns, in order.
    """

    def __init__(self, statement: Any, dialect: Dialect, columns: Sequence[Column[Any]] = ()) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        self._dialect = dialect
        self._positional = bool(compiled.positional)
        self._names = tuple(compiled.positiontup if compiled.positional else compiled.params)
        self._bind_processors = tuple(
            (name, process)
            for name, bind in compiled.binds.items()
            if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        )
        self._column_types = tuple(column.type for column in columns)
        # Result processors may depend on the driver's type codes (e.g.
        # psycopg numerics), known from the first cursor.description.
        self._result_processors: tuple[tuple[int, Callable[[Any], Any]], ...] | None = None

    def parameters(self, values: Mapping[str, Any]) -> Any:
        """Return the DBAPI parameters of ``values`` (a mapping by bind name; not modified).

        Raise StatementError, as Core does, when a value does not convert
        (its message names the parameter, never the value).
        """
        converted = {name: values[name] for name in self._names}
        for name, process in self._bind_processors:
            try:
                converted[name] = process(converted[name])
            except Exception as exc:
                raise StatementError(f"cannot convert parameter {name!r} ({type(exc).__name__})", self.sql, None,
                                     exc, hide_parameters=True) from exc
        if self._positional:
            return tuple(converted[name] for name in self._names)
        return converted

    def one(self, cursor: Any) -> _Row:
        """Fetch the only row of ``cursor``'s result; raise NoResultFound/MultipleResultsFound as Core's ``one()``."""
        rows = cursor.fetchall()  # to the end: SQLite will not commit under an unfinished statement
        if not rows:
            raise NoResultFound("No row was found when one was required")
        if len(rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when exactly one was required")
        processors = self._result_processors
        if processors is None:
            dialect = self._dialect
            processors = self._result_processors = tuple(
                (index, process)
                for index, (type_, description) in enumerate(zip(self._column_types, cursor.description, strict=True))
                if (process := type_.dialect_impl(dialect).result_processor(dialect, description[1])) is not None
            )
        row = list(rows[0])
        for index, convert in processors:
            row[index] = convert(row[index])
        return _Row._make(row)


def _incoming_row(record: TokenRecord, now: float) -> dict[str, Any]:
    """Return the row to insert for ``record``: what a save over nothing leaves (see merge_records)."""
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


def _merge_assignments(old: Any, new: Any) -> list[tuple[str, Any]]:
    """Return the ordered SET clause merging ``new`` (the proposed row) into ``old`` (the stored row).

    ``old`` is the table's columns, ``new`` the dialect's ``excluded`` /
    ``inserted`` namespace. The incoming row is normalised by
    :func:`_incoming_row` (a token that does not count is NULL), so "incoming
    has a refresh token" is ``new.refresh_token IS NOT NULL``.
    """

    def newer(token: str, issued: str) -> Any:
        return and_(
            new[token].is_not(None),
            or_(old[issued].is_(None), and_(new[issued].is_not(None), new[issued] >= old[issued])),
        )

    refresh_wins = newer("refresh_token", "refresh_token_issued_at")
    access_wins = newer("access_token", "access_token_issued_at")
    event_wins = newer("security_event", "security_event_at")

    def pick(condition: Any, column: str) -> Any:
        return case((condition, new[column]), else_=old[column])

    def later(column: str) -> Any:
        return case(
            (old[column].is_(None), new[column]),
            (new[column].is_(None), old[column]),
            (new[column] > old[column], new[column]),
            else_=old[column],
        )

    return [
        ("email", func.coalesce(new.email, old.email)),
        ("refresh_token", pick(refresh_wins, "refresh_token")),
        ("access_token", pick(access_wins, "access_token")),
        ("access_token_expiry", pick(access_wins, "access_token_expiry")),
        ("scopes", pick(and_(access_wins, new.scopes.is_not(None)), "scopes")),
        ("refresh_token_expires_at", pick(refresh_wins, "refresh_token_expires_at")),
        ("security_event", pick(event_wins, "security_event")),
        ("revoked_at", later("revoked_at")),
        ("disabled_at", later("disabled_at")),
        ("enabled_at", later("enabled_at")),
        ("created_at", func.coalesce(old.created_at, new.created_at)),
        ("updated_at", new.updated_at),
        # Last, because MySQL evaluates SET left to right and every CASE above
        # must compare against the stored issue times, not the new ones.
        ("refresh_token_issued_at", pick(refresh_wins, "refresh_token_issued_at")),
        ("access_token_issued_at", pick(access_wins, "access_token_issued_at")),
        ("security_event_at", pick(event_wins, "security_event_at")),
    ]


def _record_from_row(row: Any) -> TokenRecord:
    return TokenRecord(
        sub=row.sub,
        email=row.email,
        refresh_token=row.refresh_token,
        refresh_token_issued_at=row.refresh_token_issued_at,
        access_token=row.access_token,
        access_token_expiry=row.access_token_expiry,
        access_token_issued_at=row.access_token_issued_at,
        scopes=tuple(row.scopes.split()) if row.scopes else (),
        created_at=row.created_at,
        updated_at=row.updated_at,
        revoked_at=row.revoked_at,
        refresh_token_expires_at=row.refresh_token_expires_at,
        disabled_at=row.disabled_at,
        enabled_at=row.enabled_at,
        security_event=row.security_event,
        security_event_at=row.security_event_at,
    )


def _is_transient(exc: DBAPIError) -> bool:
    """Return True for errors after which the rolled-back transaction may simply be retried."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in ("40001", "40P01"):  # psycopg: serialization failure, deadlock
        return True
    args = getattr(orig, "args", ())
    if args and args[0] in (1205, 1213):  # MySQL: lock wait timeout, deadlock
        return True
    return "database is locked" in str(orig)


def _sqlite_file_path(database: str, uri: bool) -> str:
    """Return the path of the SQLite database file ``database`` (a path, or a URI if ``uri``)."""
    if uri and database.startswith("file:"):
        database = unquote(urlsplit(database).path)
    return database


def _sqlite_private_file(path: str) -> Any:
    """Return a ``do_connect`` listener that creates the database file 0600 before SQLite opens it.

    SQLite creates a new database 0644 (it fchmods to its default, whatever
    the umask) and gives its ``-wal`` and ``-shm`` files the database's own
    mode; an email or a ciphertext must not be readable by other local users.
    A file that exists already is left as it is, with a warning when others
    can read it.
    """
    warned = False

    def create_private(_dialect: Any, _record: Any, _cargs: Any, _cparams: Any) -> None:
        nonlocal warned
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            if not warned:
                warned = True
                mode = os.stat(path).st_mode & 0o777
                if mode & 0o077:
                    log.warning("SQLite token store %s is accessible to other users (mode %o): chmod 600 it "
                                "and its -wal and -shm files", path, mode)
        except OSError:
            pass  # SQLite's own open reports it, as it would have without this listener

    return create_private


def _sqlite_pragmas(synchronous: str) -> Any:
    def set_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(_SQLITE_BUSY_TIMEOUT * 1000)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
        finally:
            cursor.close()

    return set_pragmas


class SQLTokenStore(TokenStore):
    """A token store in the table ``table`` of the database at ``url``."""

    def __init__(
        self,
        *,
        url: str,
        table: str = DEFAULT_TABLE,
        create_table: bool = True,
        engine_options: Mapping[str, Any] | None = None,
        sqlite_synchronous: str = "FULL",
    ) -> None:
        """Build the store; connect lazily.

        ``url``: a SQLAlchemy URL (``sqlite:///path``, ``postgresql+psycopg://…``,
        ``mysql+pymysql://…``). ``table``: the table name. ``create_table``:
        create the table on first use if it is missing. ``engine_options``:
        extra keyword arguments for :func:`sqlalchemy.create_engine`
        (``connect_args`` is merged with the store's own). ``sqlite_synchronous``:
        SQLite's ``synchronous`` pragma in WAL mode: ``FULL`` (default) fsyncs
        every commit, so a refresh token stored is never lost; ``NORMAL`` syncs
        at checkpoints only — a commit survives a process crash but a power
        loss may undo the last ones (measured: ~4-8 ms less per login here).

        Raise ConfigError naming ``store.url`` for an unparsable URL, an
        unsupported database or a missing driver.
        """
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ConfigError("store.url", "not a valid SQLAlchemy URL") from exc
        backend = parsed.get_backend_name()
        if backend not in _SUPPORTED_DIALECTS:
            raise ConfigError("store.url", f"unsupported database {backend!r} (supported: {', '.join(_SUPPORTED_DIALECTS)})")
        if sqlite_synchronous not in ("FULL", "NORMAL"):
            raise ConfigError("store.sqlite_synchronous", "must be FULL or NORMAL")
        if not table or not isinstance(table, str):
            raise ConfigError("store.table", "must be a non-empty table name")

        options: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}
        connect_args: dict[str, Any] = {}
        # The cross-process write lock of a SQLite file: its path, and the
        # descriptor open on it with the pid that opened it (see _write_lock).
        self._lock_path: str | None = None
        self._lock_fd: int | None = None
        self._lock_pid = 0
        self._serial: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        self._write_serial: contextlib.AbstractContextManager[Any] = self._serial
        in_memory = backend == "sqlite" and (
            parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"
        )
        if backend == "sqlite":
            connect_args = {"check_same_thread": False, "timeout": _SQLITE_BUSY_TIMEOUT}
            if in_memory:
                # One connection holds the whole database; the lock keeps one
                # transaction at a time on it.
                options["poolclass"] = StaticPool
                self._serial = self._write_serial = threading.RLock()
            else:
                # SQLite has one writer at a time. Threads of this process queue
                # on a lock rather than in SQLite's busy handler, which sleeps
                # 1-100 ms between retries while the GIL delays the holder;
                # processes then queue on the lock file (see the module docstring).
                self._write_serial = threading.Lock()
                uri = str(parsed.query.get("uri", "")).lower() in ("true", "1")
                self._db_path = _sqlite_file_path(parsed.database or "", uri)
                self._lock_path = self._db_path + ".lock"
        extra = dict(engine_options or {})
        connect_args.update(extra.pop("connect_args", {}) or {})
        options.update(extra)
        options["connect_args"] = connect_args
        try:
            self._engine: Engine = create_engine(parsed, **options)
        except (NoSuchModuleError, ImportError) as exc:
            raise ConfigError("store.url", f"no driver for {parsed.drivername!r}: pip install 'tornado-signin[sql]'") from exc
        except (ArgumentError, TypeError) as exc:
            raise ConfigError("store.engine_options", f"rejected by SQLAlchemy: {exc}") from exc
        if backend == "sqlite" and not in_memory:
            event.listen(self._engine, "do_connect", _sqlite_private_file(self._db_path))
            event.listen(self._engine, "connect", _sqlite_pragmas(sqlite_synchronous))

        self._table = _define_table(table)
        self._dialect = backend
        # One round trip where the database can return the merged row
        # (SQLite >= 3.35, PostgreSQL): half the cost of a save on SQLite.
        self._returning = backend not in _MYSQL_DIALECTS and bool(getattr(self._engine.dialect, "insert_returning", False))
        self._upsert = self._build_upsert()
        if self._returning:
            self._upsert = self._upsert.returning(*self._table.c)
        # save()'s statements, compiled once (see the module docstring).
        dialect = self._engine.dialect
        columns = list(self._table.c)
        self._raw_upsert = _RawStatement(self._upsert, dialect, columns if self._returning else ())
        self._raw_read_back = None if self._returning else _RawStatement(
            select(self._table).where(self._table.c.sub == bindparam("sub")), dialect, columns
        )
        self._label = f"{parsed.render_as_string(hide_password=True)} table {table}"
        self._create_table = create_table
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<SQLTokenStore {self._label}>"

    @property
    def table(self) -> Table:
        """The SQLAlchemy :class:`~sqlalchemy.Table` this store uses."""
        return self._table

    @property
    def engine(self) -> Engine:
        """The store's shared engine (for tests and administrative SQL)."""
        return self._engine

    # -- the boundary ----------------------------------------------------

    @contextlib.contextmanager
    def _translate(self, operation: str) -> Iterator[None]:
        """Raise every SQLAlchemy/OS error of the block as StorageError chained to it."""
        if self._closed:
            raise StorageError(f"SQL token store {self._label}: cannot {operation}: the store is closed")
        try:
            yield
        except (SQLAlchemyError, OSError) as exc:
            cause = type(getattr(exc, "orig", None) or exc).__name__
            raise StorageError(f"SQL token store {self._label}: cannot {operation} ({cause})") from exc

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        """Hold this store's write serialisation: the in-process lock, then, on a SQLite file, the lock file's flock.

        Only one thread of a process reaches the flock (threads share the
        descriptor, and flock would not exclude them from each other).
        """
        with self._write_serial:
            if self._lock_path is None:
                yield
                return
            fd = self._open_lock_file(self._lock_path)
            fcntl.flock(fd, fcntl.LOCK_EX)  # releases the GIL while it waits
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _open_lock_file(self, path: str) -> int:
        """Return the descriptor of the lock file ``path``, opened by this process (the caller holds ``_write_serial``)."""
        if self._closed:
            raise StorageError(f"SQL token store {self._label}: cannot write: the store is closed")
        pid = os.getpid()
        if self._lock_pid != pid:
            # A descriptor inherited across fork() shares its flock with the
            # parent's, which would let both write at once: open our own.
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # our copy only: the parent's lock is untouched
                self._lock_fd = None
            self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._lock_pid = pid
        assert self._lock_fd is not None
        return self._lock_fd

    def _run(self, work: Callable[[Any], T], *, write: bool, raw: bool = False) -> T:
        """Run ``work`` in one transaction, retrying transient lock conflicts.

        ``work`` gets a Core :class:`~sqlalchemy.engine.Connection`, or with
        ``raw`` a DBAPI cursor (see :meth:`_raw_transaction`).
        """
        self._ensure_schema()
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                with self._write_lock() if write else self._serial:
                    if raw:
                        return self._raw_transaction(work)
                    if write:
                        with self._engine.begin() as conn:
                            return work(conn)
                    with self._engine.connect() as conn:
                        return work(conn)
            except DBAPIError as exc:
                if attempt == _MAX_ATTEMPTS or not _is_transient(exc):
                    raise
                log.debug("SQL token store %s: transient %s, retrying", self._label, type(exc.orig).__name__)
                time.sleep(random.uniform(0.005, 0.02 * 2**attempt))
        raise AssertionError("unreachable")

    def _raw_transaction(self, work: Callable[[Any], T]) -> T:
        """Run ``work(cursor)`` in one transaction on a DBAPI connection of the pool, and commit.

        The connection is checked out as Core checks it out (pre-pinged: a
        stale one is replaced) and returned to the pool after. On an error the
        transaction is rolled back, or the connection discarded if it is lost
        (or cannot roll back); a DBAPI error is raised as the
        :class:`~sqlalchemy.exc.DBAPIError` subclass Core would raise, with
        parameters hidden, chained to the driver's exception.
        """
        dialect = self._engine.dialect
        dbapi_error = dialect.loaded_dbapi.Error

        def wrapped(exc: Exception, lost: bool) -> StatementError:
            # A DBAPIError subclass for a driver error (the only kind passed here).
            return DBAPIError.instance(None, None, exc, dbapi_error, hide_parameters=True,
                                       connection_invalidated=lost, dialect=dialect)

        try:
            connection = self._engine.raw_connection()
        except dbapi_error as exc:  # the pool raises the driver's own errors
            raise wrapped(exc, dialect.is_disconnect(exc, None, None)) from exc
        try:
            cursor = connection.cursor()
            try:
                result = work(cursor)
            finally:
                cursor.close()
            connection.commit()
            return result
        except BaseException as exc:
            lost = isinstance(exc, dbapi_error) and dialect.is_disconnect(exc, connection.dbapi_connection, None)
            if not lost:
                try:
                    connection.rollback()
                except dbapi_error:
                    lost = True  # in an unknown state: not for the pool
            if lost:
                # Closed, never back in the pool. (Core would also mark the
                # pool's older connections stale; pre-ping finds them anyway.)
                connection.invalidate(exc)
            if isinstance(exc, dbapi_error):
                raise wrapped(exc, lost) from exc
            raise
        finally:
            # Back to the pool, whose reset-on-return rolls back: free on
            # SQLite and psycopg when no transaction is open, one more round
            # trip with PyMySQL.
            connection.close()

    # -- schema ----------------------------------------------------------

    def _ensure_schema(self) -> None:
        if self._schema_ready or not self._create_table:
            return
        with self._schema_lock:
            if not self._schema_ready:
                self._create_all()

    def _create_all(self) -> None:
        try:
            with self._serial:
                self._table.metadata.create_all(self._engine, checkfirst=True)
        except DBAPIError:
            # Another process may have created it between the check and the CREATE.
            with self._serial:
                if not inspect(self._engine).has_table(self._table.name):
                    raise
        self._add_missing_columns()
        self._schema_ready = True
        log.debug("SQL token store %s: table ready", self._label)

    def _add_missing_columns(self) -> None:
        """Add the columns later releases introduced to a table an older one created (all nullable)."""
        with self._serial:
            present = {c["name"] for c in inspect(self._engine).get_columns(self._table.name)}
            missing = [c for c in self._table.c if c.name not in present]
            if not missing:
                return
            preparer = self._engine.dialect.identifier_preparer
            with self._engine.begin() as conn:
                for column in missing:
                    kind = column.type.compile(dialect=self._engine.dialect)
                    try:
                        conn.execute(text(f"ALTER TABLE {preparer.format_table(self._table)} "
                                          f"ADD COLUMN {preparer.quote(column.name)} {kind}"))
                    except DBAPIError:
                        # Added meanwhile by another process: fine if it is there now.
                        if column.name not in {c["name"] for c in inspect(conn).get_columns(self._table.name)}:
                            raise
            log.info("SQL token store %s: added columns %s", self._label, ", ".join(c.name for c in missing))

    def create_schema(self) -> None:
        """Create the table if it does not exist (idempotent). Raise StorageError on failure."""
        with self._translate("create the table"), self._schema_lock:
            self._create_all()

    def drop_schema(self) -> None:
        """Drop the table and every record in it (idempotent). Raise StorageError on failure."""
        with self._translate("drop the table"), self._schema_lock, self._serial:
            self._table.metadata.drop_all(self._engine, checkfirst=True)
            self._schema_ready = False

    # -- TokenStore ------------------------------------------------------

    def get(self, sub: str) -> TokenRecord | None:
        if not is_valid_sub(sub):
            return None
        table = self._table
        with self._translate("read a record"):
            row = self._run(lambda conn: conn.execute(select(table).where(table.c.sub == sub)).first(), write=False)
        return None if row is None else _record_from_row(row)

    def _build_upsert(self) -> Any:
        # Built once, values bound per execution: building the CASE tree per
        # save cost more CPU than the database's work.
        table = self._table
        if self._dialect in _MYSQL_DIALECTS:
            from sqlalchemy.dialects.mysql import insert as mysql_insert

            stmt = mysql_insert(table)
            return stmt.on_duplicate_key_update(_merge_assignments(table.c, stmt.inserted))
        if self._dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as postgresql_insert

            pg_stmt = postgresql_insert(table)
            return pg_stmt.on_conflict_do_update(
                index_elements=[table.c.sub], set_=dict(_merge_assignments(table.c, pg_stmt.excluded))
            )
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        sqlite_stmt = sqlite_insert(table)
        return sqlite_stmt.on_conflict_do_update(
            index_elements=[table.c.sub], set_=dict(_merge_assignments(table.c, sqlite_stmt.excluded))
        )

    def save(self, record: TokenRecord) -> TokenRecord:
        check_sub(record.sub)
        values = _incoming_row(record, time.time())
        upsert, read_back = self._raw_upsert, self._raw_read_back

        def merge(cursor: Any) -> _Row:
            cursor.execute(upsert.sql, upsert.parameters(values))
            if read_back is None:  # RETURNING
                return upsert.one(cursor)
            cursor.execute(read_back.sql, read_back.parameters(values))
            return read_back.one(cursor)

        with self._translate("save a record"):
            row = self._run(merge, write=True, raw=True)
        return _record_from_row(row)

    def delete(self, sub: str) -> bool:
        if not is_valid_sub(sub):
            return False
        table = self._table
        with self._translate("delete a record"):
            count = self._run(lambda conn: conn.execute(table.delete().where(table.c.sub == sub)).rowcount, write=True)
        return count > 0

    def _matches(self, sub: str, refresh_token: str | None) -> Any:
        table = self._table
        held: Any
        if refresh_token is None:
            held = table.c.refresh_token.is_(None)
        elif self._dialect in _MYSQL_DIALECTS:
            # Byte for byte: MySQL's text collations ignore case and trailing spaces, even _bin pads.
            held = cast(table.c.refresh_token, BINARY()) == cast(bindparam("if_refresh_token", refresh_token), BINARY())
        else:
            held = table.c.refresh_token == refresh_token
        return and_(table.c.sub == sub, held)

    def mark_revoked(self, sub: str, revoked_at: float, *, if_refresh_token: str | None) -> bool:
        if not is_valid_sub(sub):
            return False
        table = self._table
        # One conditional UPDATE: the database compares the refresh token and
        # writes the later mark under the row lock, whatever runs meanwhile.
        statement = table.update().where(self._matches(sub, if_refresh_token)).values(
            revoked_at=case((or_(table.c.revoked_at.is_(None), table.c.revoked_at < revoked_at), revoked_at),
                            else_=table.c.revoked_at),
            updated_at=time.time(),
        )
        with self._translate("mark a record revoked"):
            count = self._run(lambda conn: conn.execute(statement).rowcount, write=True)
        return count > 0

    def delete_if(self, sub: str, *, if_refresh_token: str | None) -> bool:
        if not is_valid_sub(sub):
            return False
        statement = self._table.delete().where(self._matches(sub, if_refresh_token))
        with self._translate("delete a record"):
            count = self._run(lambda conn: conn.execute(statement).rowcount, write=True)
        return count > 0

    def records(self) -> Iterator[TokenRecord]:
        table = self._table
        last: str | None = None
        while True:
            query = select(table).order_by(table.c.sub).limit(_PAGE_SIZE)
            if last is not None:
                query = query.where(table.c.sub > last)
            with self._translate("list records"):
                # _run calls the lambda before it returns, inside this iteration.
                rows = self._run(lambda conn: conn.execute(query).all(), write=False)  # noqa: B023
            for row in rows:
                yield _record_from_row(row)
            if len(rows) < _PAGE_SIZE:
                return
            last = rows[-1].sub

    def check(self) -> None:
        table = self._table
        with self._translate("reach the table"):
            self._run(lambda conn: conn.execute(select(table.c.sub).limit(1)).all(), write=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._write_serial:  # after any write in flight, which may hold the lock file
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
        self._engine.dispose()
