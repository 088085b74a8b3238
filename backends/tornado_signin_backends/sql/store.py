"""The ``sql`` token store itself: one engine, one table, every statement through SQLAlchemy Core (see the package)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import and_, bindparam, case, cast, create_engine, event, inspect, or_, select, text
from sqlalchemy.dialects.mysql import BINARY
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from tornado_signin.errors import ConfigError, StorageError
from tornado_signin.store import TokenRecord, TokenStore

from .._common import check_sub, is_valid_sub
from . import sqlite
from .errors import is_transient, translate
from .merge import build_upsert, build_upsert_many
from .schema import MYSQL_DIALECTS, SUPPORTED_DIALECTS, define_table, incoming_row, record_from_row

__all__ = ["SQLTokenStore", "DEFAULT_TABLE"]

log = logging.getLogger(__name__)

DEFAULT_TABLE = "tornado_signin_tokens"

_MAX_ATTEMPTS = 6
_PAGE_SIZE = 500
#: Subs per SELECT … IN of get_many, records per transaction of save_many.
_BATCH_SIZE = 500

T = TypeVar("T")


def _all(query: Any, conn: Connection) -> Any:
    return conn.execute(query).all()


def _all_of(query: Any, values: dict[str, Any], conn: Connection) -> Any:
    return conn.execute(query, values).all()


class SQLTokenStore(TokenStore):
    """A token store in the table ``table`` of the database at ``url``.

    Example::

        store = SQLTokenStore(url="sqlite:///tokens.db")
        store.save(TokenRecord(sub="1234", refresh_token="1//…", refresh_token_issued_at=time.time()))
        assert store.get("1234").refresh_token
        store.close()
    """

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
        if backend not in SUPPORTED_DIALECTS:
            raise ConfigError("store.url", f"unsupported database {backend!r} (supported: {', '.join(SUPPORTED_DIALECTS)})")
        if sqlite_synchronous not in ("FULL", "NORMAL"):
            raise ConfigError("store.sqlite_synchronous", "must be FULL or NORMAL")
        if not table or not isinstance(table, str):
            raise ConfigError("store.table", "must be a non-empty table name")

        options: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}
        connect_args: dict[str, Any] = {}
        database_file: str | None = None  # a SQLite file's path
        # Reads take _serial, writes _writes (see sqlite.WriteQueue).
        self._serial: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        self._writes = sqlite.WriteQueue(None, contextlib.nullcontext())
        in_memory = backend == "sqlite" and (
            parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"
        )
        if backend == "sqlite":
            connect_args = {"check_same_thread": False, "timeout": sqlite.BUSY_TIMEOUT}
            if in_memory:
                # One connection holds the whole database; the lock keeps one
                # transaction at a time on it.
                options["poolclass"] = StaticPool
                self._serial = threading.RLock()
                self._writes = sqlite.WriteQueue(None, self._serial)
            else:
                # SQLite has one writer at a time: threads of this process queue
                # on a lock rather than in SQLite's busy handler, processes on
                # the lock file (see the sqlite module).
                uri = str(parsed.query.get("uri", "")).lower() in ("true", "1")
                database_file = sqlite.file_path(parsed.database or "", uri)
                self._writes = sqlite.WriteQueue(database_file + ".lock")
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
        self._database_file = database_file
        # A store that creates no table creates no SQLite file either, until create_schema() is called.
        self._may_create_file = create_table
        if database_file is not None:
            event.listen(self._engine, "do_connect", sqlite.private_file(database_file, lambda: self._may_create_file))
            event.listen(self._engine, "connect", sqlite.pragmas(sqlite_synchronous))

        self._table = define_table(table)
        self._dialect = backend
        # One round trip where the database can return the merged row
        # (SQLite >= 3.35, PostgreSQL): half the cost of a save on SQLite.
        returning = backend not in MYSQL_DIALECTS and bool(getattr(self._engine.dialect, "insert_returning", False))
        # save()'s statements, built once; SQLAlchemy caches their compiled form.
        self._upsert = build_upsert(self._table, backend, returning=returning)
        #: save_many's statement for a batch of distinct subs, where the database returns rows in order.
        self._upsert_many = build_upsert_many(self._table, backend) if returning and getattr(
            self._engine.dialect, "insert_executemany_returning_sort_by_parameter_order", False) else None
        #: One record by sub, built once: building the statement per get (and its cache key) cost more CPU
        #: than SQLite's work (SQLite: 106 -> 47 us per get, measured on the engine alone).
        self._select_one = select(self._table).where(self._table.c.sub == bindparam("sub"))
        self._read_back = None if returning else self._select_one
        #: Many records by sub (get_many), one statement whatever the count (an expanding IN).
        self._select_in = select(self._table).where(self._table.c.sub.in_(bindparam("subs", expanding=True)))
        self._label = f"{parsed.render_as_string(hide_password=True)} table {table}"
        self._create_table = create_table
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<SQLTokenStore {self._label}>"

    @property
    def table(self) -> Any:
        """The SQLAlchemy :class:`~sqlalchemy.Table` this store uses."""
        return self._table

    @property
    def engine(self) -> Engine:
        """The store's shared engine (for tests and administrative SQL)."""
        return self._engine

    # -- the boundary ----------------------------------------------------

    @contextlib.contextmanager
    def _translate(self, operation: str) -> Iterator[None]:
        """Raise every SQLAlchemy/OS error of the block as StorageError chained to it (see errors.translate)."""
        if self._closed:
            raise StorageError(f"SQL token store {self._label}: cannot {operation}: the store is closed")
        with translate(self._label, operation):
            yield

    def _write_lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold this store's write serialisation: the in-process lock, then, on a SQLite file, the lock file's flock."""
        return self._writes.held()

    def _run(self, work: Callable[[Connection], T], *, write: bool) -> T:
        """Run ``work(connection)`` in one transaction (committed if ``write``), retrying transient lock conflicts."""
        self._ensure_schema()
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                with self._write_lock() if write else self._serial:
                    if write:
                        with self._engine.begin() as conn:
                            return work(conn)
                    with self._engine.connect() as conn:
                        return work(conn)
            except DBAPIError as exc:
                if attempt == _MAX_ATTEMPTS or not is_transient(exc):
                    raise
                log.debug("SQL token store %s: transient %s, retrying", self._label, type(exc.orig).__name__)
                time.sleep(random.uniform(0.005, 0.02 * 2**attempt))
            except sqlite.QueueClosed:  # closed while this call waited for the queue
                raise StorageError(f"SQL token store {self._label}: the store is closed") from None
        raise AssertionError("unreachable")

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
        """Create the table (and a missing SQLite file) if it does not exist (idempotent). Raise StorageError on failure."""
        with self._translate("create the table"), self._schema_lock:
            self._may_create_file = True
            self._create_all()

    def has_schema(self) -> bool:
        """Return whether the table exists, creating nothing (not even a missing SQLite file).

        A missing SQLite file is a store without its table; one whose folder
        is missing too is a wrong path. Raise StorageError for that, and
        when the database cannot answer.
        """
        with self._translate("look for the table"):
            path = self._database_file
            if path is not None and not os.path.exists(path) and os.path.isdir(os.path.dirname(path) or "."):
                return False
            with self._serial:
                return bool(inspect(self._engine).has_table(self._table.name))

    def drop_schema(self) -> None:
        """Drop the table and every record in it (idempotent). Raise StorageError on failure."""
        with self._translate("drop the table"), self._schema_lock, self._serial:
            self._table.metadata.drop_all(self._engine, checkfirst=True)
            self._schema_ready = False

    # -- TokenStore ------------------------------------------------------

    def get(self, sub: str) -> TokenRecord | None:
        if not is_valid_sub(sub):
            return None
        statement, values = self._select_one, {"sub": sub}
        with self._translate("read a record"):
            row = self._run(lambda conn: conn.execute(statement, values).first(), write=False)
        return None if row is None else record_from_row(row)

    def save(self, record: TokenRecord) -> TokenRecord:
        check_sub(record.sub)
        values = incoming_row(record, time.time())
        upsert, read_back = self._upsert, self._read_back

        def merge(conn: Connection) -> Any:
            if read_back is None:  # RETURNING
                return conn.execute(upsert, values).one()
            conn.execute(upsert, values)
            return conn.execute(read_back, {"sub": values["sub"]}).one()

        with self._translate("save a record"):
            row = self._run(merge, write=True)
        return record_from_row(row)

    def get_many(self, subs: Sequence[str]) -> list[TokenRecord | None | Exception]:
        """As :meth:`TokenStore.get_many`: one ``SELECT … WHERE sub IN (…)`` per :data:`_BATCH_SIZE` subs.

        When a query fails, the subs it asked for are read one by one, so
        each gets the outcome its own ``get`` has (never worse than those gets).
        """
        found: dict[str, TokenRecord] = {}
        failed: set[str] = set()
        wanted = list(dict.fromkeys(sub for sub in subs if is_valid_sub(sub)))
        statement = self._select_in
        for start in range(0, len(wanted), _BATCH_SIZE):
            chunk = wanted[start:start + _BATCH_SIZE]
            try:
                with self._translate("read records"):
                    rows = self._run(functools.partial(_all_of, statement, {"subs": chunk}), write=False)
                    records = [record_from_row(row) for row in rows]
            except Exception:  # each of them gets its own get's outcome below
                failed.update(chunk)
                continue
            found.update((record.sub, record) for record in records)
        # The base class's loop: each failed sub's own get outcome.
        retry = list(failed)
        retried = dict(zip(retry, super().get_many(retry), strict=True))
        return [retried[sub] if sub in retried else found.get(sub) if isinstance(sub, str) else None
                for sub in subs]

    def save_many(self, records: Sequence[TokenRecord]) -> list[TokenRecord | Exception]:
        """As :meth:`TokenStore.save_many`: the upserts of :data:`_BATCH_SIZE` records in one transaction (one
        write-queue turn, one commit), each record merged as ``save`` merges it, in order: in one execution
        where the database returns rows in order and the batch's subs are distinct (``build_upsert_many``),
        else one upsert per record.

        When a batch's transaction fails, it is rolled back and its records are
        saved one by one, so each gets the outcome its own ``save`` has. A sub
        the store refuses is that record's ValueError, before any SQL.
        """
        results: dict[int, TokenRecord | Exception] = {}
        todo: list[tuple[int, dict[str, Any]]] = []
        now = time.time()
        for index, record in enumerate(records):
            try:
                check_sub(record.sub)
            except ValueError as exc:
                results[index] = exc
            else:
                todo.append((index, incoming_row(record, now)))
        upsert, upsert_many, read_back = self._upsert, self._upsert_many, self._read_back

        def merge_all(batch: list[tuple[int, dict[str, Any]]], conn: Connection) -> list[Any]:
            if upsert_many is not None and len(batch) > 1 and len({values["sub"] for _, values in batch}) == len(batch):
                return list(conn.execute(upsert_many, [values for _, values in batch]).all())
            if read_back is None:  # RETURNING
                return [conn.execute(upsert, values).one() for _, values in batch]
            rows = []
            for _, values in batch:
                conn.execute(upsert, values)
                rows.append(conn.execute(read_back, {"sub": values["sub"]}).one())
            return rows

        for start in range(0, len(todo), _BATCH_SIZE):
            batch = todo[start:start + _BATCH_SIZE]
            try:
                with self._translate("save records"):
                    rows = self._run(functools.partial(merge_all, batch), write=True)
                    for (index, _), row in zip(batch, rows, strict=True):
                        results[index] = record_from_row(row)
            except Exception:  # rolled back: each record gets its own save's outcome (the base class's loop)
                indexes = [index for index, _ in batch]
                results.update(zip(indexes, super().save_many([records[index] for index in indexes]), strict=True))
        return [results[index] for index in range(len(records))]

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
        elif self._dialect in MYSQL_DIALECTS:
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
                rows = self._run(functools.partial(_all, query), write=False)
            for row in rows:
                yield record_from_row(row)
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
        self._writes.close()
        self._engine.dispose()
