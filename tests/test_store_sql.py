"""The ``sql`` backend: the contract on SQLite, PostgreSQL and MariaDB, plus what is specific to SQL."""

from __future__ import annotations

import functools
import multiprocessing
import os
import queue
import sqlite3
import stat

import pytest
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from tornado_signin.errors import ConfigError, StorageError
from tornado_signin.store import TokenRecord, load_store
from tornado_signin.testing import TokenStoreContract, full_record
from tornado_signin_backends.sql import store as sql_store
from tornado_signin_backends.sql import SQLTokenStore


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'tokens.sqlite3'}"


def _server_store(url: str, table: str):
    store = SQLTokenStore(url=url, table=table)
    yield store
    store.close()
    admin = SQLTokenStore(url=url, table=table)
    admin.drop_schema()
    admin.close()


class TestSQLiteContract(TokenStoreContract):
    @pytest.fixture
    def store(self, sqlite_url):
        store = SQLTokenStore(url=sqlite_url)
        yield store
        store.close()

    def test_processes_never_lose_a_save(self, sqlite_url):
        SQLTokenStore(url=sqlite_url).create_schema()
        self.assert_process_safe(functools.partial(SQLTokenStore, url=sqlite_url))

    def test_file_is_in_wal_mode(self, store, sqlite_url):
        store.save(full_record())
        with store.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


class TestSQLiteInMemoryContract(TokenStoreContract):
    @pytest.fixture
    def store(self):
        store = SQLTokenStore(url="sqlite://")
        yield store
        store.close()


class TestPostgresContract(TokenStoreContract):
    @pytest.fixture
    def store(self, postgres_url, unique_name):
        yield from _server_store(postgres_url, unique_name)

    def test_processes_never_lose_a_save(self, postgres_url, unique_name):
        SQLTokenStore(url=postgres_url, table=unique_name).create_schema()
        try:
            self.assert_process_safe(functools.partial(SQLTokenStore, url=postgres_url, table=unique_name))
        finally:
            SQLTokenStore(url=postgres_url, table=unique_name).drop_schema()


class TestMariaDBContract(TokenStoreContract):
    @pytest.fixture
    def store(self, mariadb_url, unique_name):
        yield from _server_store(mariadb_url, unique_name)

    def test_processes_never_lose_a_save(self, mariadb_url, unique_name):
        try:
            # No create_schema() first: the workers race to create the table.
            self.assert_process_safe(functools.partial(SQLTokenStore, url=mariadb_url, table=unique_name))
        finally:
            SQLTokenStore(url=mariadb_url, table=unique_name).drop_schema()

    def test_sub_column_is_binary(self, store):
        store.save(full_record())
        with store.engine.connect() as conn:
            column_type = conn.execute(
                text("SELECT data_type FROM information_schema.columns WHERE table_name = :t AND column_name = 'sub'"),
                {"t": store.table.name},
            ).scalar()
        assert column_type == "varbinary"


# -- SQL-specific behaviour (SQLite unless the server matters) -------------------------


def test_loaded_through_the_entry_point(sqlite_url):
    store = load_store("sql", {"url": sqlite_url, "table": "custom_tokens"})
    assert isinstance(store, SQLTokenStore)
    store.save(full_record())
    assert inspect(store.engine).has_table("custom_tokens")
    store.close()


def test_misspelt_option_is_a_config_error(sqlite_url):
    with pytest.raises(ConfigError, match="store"):
        load_store("sql", {"url": sqlite_url, "tabel": "x"})
    with pytest.raises(TypeError):
        SQLTokenStore(sqlite_url)  # options are keyword-only


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"url": "not a url"}, "store.url"),
        ({"url": "oracle+nosuchdriver://x/y"}, "store.url"),
        ({"url": "postgresql+nosuchdriver://x/y"}, "store.url"),
        ({"url": "sqlite://", "table": ""}, "store.table"),
    ],
)
def test_bad_config_names_the_key(options, key):
    with pytest.raises(ConfigError) as info:
        SQLTokenStore(**options)
    assert info.value.key == key


def test_create_table_false_needs_create_schema(sqlite_url):
    store = SQLTokenStore(url=sqlite_url, create_table=False)
    with pytest.raises(StorageError) as info:
        store.get("u")
    assert info.value.__cause__ is not None
    with pytest.raises(StorageError):
        store.check()
    store.create_schema()
    store.create_schema()
    store.check()
    assert store.save(TokenRecord(sub="u", email="u@example.com")).email == "u@example.com"
    store.drop_schema()
    store.drop_schema()
    store.close()


def test_errors_are_storage_errors_without_token_values(sqlite_url):
    store = SQLTokenStore(url=sqlite_url, create_table=False)
    store.create_schema()
    with store.engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {store.table.name}"))
        conn.execute(text(f"CREATE TABLE {store.table.name} (sub TEXT PRIMARY KEY, refresh_token TEXT NOT NULL)"))
    record = full_record()
    with pytest.raises(StorageError) as info:
        store.save(record)
    assert info.value.__cause__ is not None
    message = str(info.value)
    assert record.refresh_token not in message and record.access_token not in message
    assert "sql" in message.lower()
    cause_message = str(info.value.__cause__)
    assert record.refresh_token not in cause_message, "SQLAlchemy must hide parameters"
    store.close()


def test_unreachable_server_is_a_storage_error():
    store = SQLTokenStore(
        url="postgresql+psycopg://postgres@127.0.0.1:1/test", engine_options={"connect_args": {"connect_timeout": 2}}
    )
    with pytest.raises(StorageError) as info:
        store.check()
    assert "OperationalError" in str(info.value)
    with pytest.raises(StorageError):
        store.save(full_record())
    store.close()


def test_closed_store_raises_storage_error(sqlite_url):
    store = SQLTokenStore(url=sqlite_url)
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.get("u")


def test_records_pages_through_large_tables(sqlite_url, monkeypatch):
    monkeypatch.setattr(sql_store, "_PAGE_SIZE", 4)
    store = SQLTokenStore(url=sqlite_url)
    subs = {f"user-{i}" for i in range(13)}
    for sub in subs:
        store.save(TokenRecord(sub=sub))
    listed = [r.sub for r in store.records()]
    assert sorted(listed) == sorted(subs)
    store.close()


def test_sqlite_file_is_a_real_file(sqlite_url, tmp_path):
    store = SQLTokenStore(url=sqlite_url)
    store.save(full_record())
    store.close()
    path = tmp_path / "tokens.sqlite3"
    assert stat.S_ISREG(os.stat(path).st_mode)


def spy_statements(store: SQLTokenStore) -> list[str]:
    """Record every SQL statement ``store`` executes (every one goes through Core: engine events see it)."""
    seen: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    return seen


@pytest.mark.parametrize("server", ["sqlite", "postgres", "mariadb"])
def test_merge_is_one_statement_on_the_server(server, request, unique_name):
    """A save runs one upsert, not a SELECT then UPDATE (and, on MySQL, reads the row back)."""
    url = request.getfixturevalue(f"{server}_url")
    store = SQLTokenStore(url=url, table=unique_name)
    seen = spy_statements(store)
    try:
        store.save(full_record())
        seen.clear()
        store.save(TokenRecord(sub=full_record().sub, refresh_token="rt-x", refresh_token_issued_at=1.0))
        writes = [s for s in seen if not s.lstrip().upper().startswith("SELECT")]
        assert len(writes) == 1
        assert "ON CONFLICT" in writes[0] or "ON DUPLICATE KEY UPDATE" in writes[0]
        assert len(seen) == (2 if server == "mariadb" else 1)
        assert store.get(full_record().sub).refresh_token == full_record().refresh_token
    finally:
        store.drop_schema()
        store.close()


@pytest.mark.parametrize("server", ["sqlite", "postgres", "mariadb"])
def test_batches_are_one_query_and_one_transaction(server, request, unique_name):
    """get_many is one SELECT … IN; save_many one transaction (one write-queue turn, one commit) running each
    record's upsert as save does."""
    url = request.getfixturevalue(f"{server}_url")
    store = SQLTokenStore(url=url, table=unique_name)
    seen = spy_statements(store)
    commits: list[int] = []
    event.listen(store.engine, "commit", lambda _conn: commits.append(1))
    try:
        existing = [store.save(full_record(sub=f"batch-{i}", email=f"{i}@example.com")) for i in range(3)]
        seen.clear()
        commits.clear()
        assert store.get_many([r.sub for r in existing] + ["missing"]) == [*existing, None]
        assert len(seen) == 1 and " IN " in seen[0].upper()
        seen.clear()
        incoming = [full_record(sub=f"batch-{i}", access_token=f"at-new-{i}", access_token_issued_at=1_800_000_000.0,
                                email=None) for i in range(5)]
        answers = store.save_many(incoming)
        assert [a.access_token for a in answers] == [f"at-new-{i}" for i in range(5)]
        # Merged over the stored rows (emails kept), new rows created.
        assert [a.email for a in answers] == ["0@example.com", "1@example.com", "2@example.com", None, None]
        assert answers == store.get_many([r.sub for r in incoming])
        assert len(commits) == 1
        assert len([s for s in seen if s.lstrip().upper().startswith("INSERT")]) == 5
    finally:
        store.drop_schema()
        store.close()


@pytest.mark.parametrize("server", ["sqlite", "postgres", "mariadb"])
def test_a_record_failing_in_a_batch_fails_alone(server, request, unique_name):
    """A record the database refuses rolls its batch back; the batch is then saved record by record, so the
    others are saved and only that record's item is its StorageError (no value in it)."""
    url = request.getfixturevalue(f"{server}_url")
    store = SQLTokenStore(url=url, table=unique_name)
    try:
        incoming = [full_record(sub=f"ok-{i}") for i in range(3)]
        incoming.insert(1, full_record(sub="bad", refresh_token_issued_at="1//rt-SECRET-as-a-time"))
        incoming.append(full_record(sub="bad-email", email="no\ud800utf-8"))  # the driver cannot encode it
        answers = store.save_many(incoming)
        assert isinstance(answers[1], StorageError) and "SECRET" not in str(answers[1])
        assert isinstance(answers[-1], (StorageError, UnicodeError))  # what its own save raises
        assert [a.sub for a in answers if isinstance(a, TokenRecord)] == ["ok-0", "ok-1", "ok-2"]
        assert store.get("bad") is None and store.get("bad-email") is None
        assert all(store.get(f"ok-{i}") is not None for i in range(3))
    finally:
        store.drop_schema()
        store.close()


def test_batches_larger_than_a_batch_are_split(sqlite_url, monkeypatch):
    monkeypatch.setattr(sql_store, "_BATCH_SIZE", 4)
    store = SQLTokenStore(url=sqlite_url)
    store.check()  # the table created
    seen = spy_statements(store)
    commits: list[int] = []
    event.listen(store.engine, "commit", lambda _conn: commits.append(1))
    subs = [f"user-{i:02d}" for i in range(10)]
    answers = store.save_many([TokenRecord(sub=sub, email=f"{sub}@example.com") for sub in subs])
    assert [a.sub for a in answers] == subs
    assert len([s for s in seen if s.lstrip().upper().startswith("INSERT")]) == 10
    assert len(commits) == 3  # transactions of 4, 4 and 2 records
    seen.clear()
    assert store.get_many(subs[::-1] + ["nobody"]) == [*answers[::-1], None]
    assert len(seen) == 3
    store.close()


def test_a_failing_batch_read_is_read_one_by_one(sqlite_url):
    """A SELECT … IN that fails is retried sub by sub: each sub gets the outcome of its own get."""
    store = SQLTokenStore(url=sqlite_url)
    saved = store.save(full_record(sub="there"))

    def refuse_in(_conn, _cursor, statement, *_args):
        if " IN " in statement.upper():
            raise sqlite3.OperationalError("disk I/O error")

    event.listen(store.engine, "before_cursor_execute", refuse_in)
    assert store.get_many(["there", "absent"]) == [saved, None]
    event.remove(store.engine, "before_cursor_execute", refuse_in)
    store.close()
    answers = store.get_many(["there"])
    assert isinstance(answers[0], StorageError)  # closed: each sub's own StorageError


def test_mysql_assignment_order_reads_old_issue_times(mariadb_url, unique_name):
    """On MySQL a column assigned earlier in ON DUPLICATE KEY UPDATE is already new when read later."""
    store = SQLTokenStore(url=mariadb_url, table=unique_name)
    try:
        store.save(TokenRecord(sub="u", refresh_token="rt-1", refresh_token_issued_at=10.0,
                               access_token="at-1", access_token_issued_at=10.0, access_token_expiry=11.0,
                               scopes=("a",)))
        merged = store.save(TokenRecord(sub="u", refresh_token="rt-2", refresh_token_issued_at=20.0,
                                        access_token="at-2", access_token_issued_at=20.0, access_token_expiry=21.0,
                                        scopes=("b",)))
        assert (merged.refresh_token, merged.refresh_token_issued_at) == ("rt-2", 20.0)
        assert (merged.access_token, merged.access_token_expiry, merged.scopes) == ("at-2", 21.0, ("b",))
    finally:
        store.drop_schema()
        store.close()


# -- the cross-process write lock of a SQLite file ------------------------------------


def _save_in_child(url: str, sub: str, started, results) -> None:
    """Spawned: save ``sub`` to ``url``, saying when the save starts and how it ended."""
    store = SQLTokenStore(url=url)
    try:
        store.check()  # connected and schema ready: what is left to wait for is the write itself
        started.set()
        results.put(store.save(TokenRecord(sub=sub, email="child@example.com")).email)
    except BaseException as exc:  # reported to the test
        results.put(repr(exc))
    finally:
        store.close()


def test_sqlite_writes_queue_on_a_lock_file_across_processes(sqlite_url, tmp_path):
    """A save in another process waits while this one holds the lock file, then succeeds."""
    holder = SQLTokenStore(url=sqlite_url)
    holder.save(full_record())
    lock_path = tmp_path / "tokens.sqlite3.lock"
    assert stat.S_IMODE(os.stat(lock_path).st_mode) == 0o600
    ctx = multiprocessing.get_context("spawn")
    started, results = ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_save_in_child, args=(sqlite_url, "child-user", started, results))
    try:
        with holder._write_lock():  # what a save holds around its transaction
            child.start()
            assert started.wait(timeout=60), "the child never got to its save"
            with pytest.raises(queue.Empty):
                results.get(timeout=1.0)  # blocked on the lock file (SQLite itself is not locked)
            assert holder.get("child-user") is None  # readers do not wait
        assert results.get(timeout=30) == "child@example.com"
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
    assert holder.get("child-user").email == "child@example.com"
    holder.close()


def _save_after_fork(store: SQLTokenStore, go, results) -> None:
    """Forked with ``store``: on ``go``, save through it (a fresh pool: SQLite connections must not cross fork)."""
    try:
        store.engine.dispose(close=False)
        go.wait(timeout=60)
        results.put(store.save(TokenRecord(sub="forked-user", email="fork@example.com")).email)
    except BaseException as exc:
        results.put(repr(exc))


def test_sqlite_lock_file_is_reopened_after_fork(sqlite_url):
    """A forked child does not share the parent's flock (same open file), which would let both write."""
    store = SQLTokenStore(url=sqlite_url)
    store.save(full_record())  # the lock file is open in the parent now
    ctx = multiprocessing.get_context("fork")
    go, results = ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_save_after_fork, args=(store, go, results))
    try:
        child.start()  # before taking the lock: a fork copies held threading locks, held forever
        with store._write_lock():
            go.set()
            with pytest.raises(queue.Empty):
                results.get(timeout=1.0)
        assert results.get(timeout=30) == "fork@example.com"
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
    assert store.get("forked-user").email == "fork@example.com"
    store.close()


def test_sqlite_lock_file_of_a_uri_and_none_in_memory(tmp_path):
    uri_store = SQLTokenStore(url=f"sqlite:///file:{tmp_path / 'uri db.sqlite3'}?uri=true")
    uri_store.save(full_record())
    uri_store.close()
    assert (tmp_path / "uri db.sqlite3.lock").exists()
    memory = SQLTokenStore(url="sqlite://")
    memory.save(full_record())
    assert memory._writes.path is None and memory._writes.fd is None
    memory.close()


def test_closed_store_releases_its_lock_file(sqlite_url):
    store = SQLTokenStore(url=sqlite_url)
    store.save(full_record())
    lock_path = os.path.realpath(store._writes.path)

    def open_on_lock_file() -> list[str]:
        return [fd for fd in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{fd}") == lock_path]

    assert len(open_on_lock_file()) == 1
    store.close()
    assert open_on_lock_file() == []


# -- save on lost connections, and the errors of a save ---------------------------------

_BACKEND_ID = {"postgres": "SELECT pg_backend_pid()", "mariadb": "SELECT CONNECTION_ID()"}
_KILL = {"postgres": "SELECT pg_terminate_backend({})", "mariadb": "KILL {}"}


@pytest.mark.parametrize("server", ["postgres", "mariadb"])
def test_save_replaces_a_pooled_connection_the_server_closed(server, request, unique_name):
    """A connection killed while idle in the pool is pre-pinged and replaced; one killed mid-save is discarded."""
    url = request.getfixturevalue(f"{server}_url")
    store = SQLTokenStore(url=url, table=unique_name, engine_options={"pool_size": 1, "max_overflow": 0})
    admin = create_engine(url, poolclass=NullPool)

    def kill_the_pooled_connection() -> None:
        with store.engine.connect() as conn:
            backend = conn.execute(text(_BACKEND_ID[server])).scalar()
        with admin.begin() as conn:
            conn.execute(text(_KILL[server].format(int(backend))))

    try:
        store.save(full_record())
        kill_the_pooled_connection()
        assert store.save(full_record(email="after-kill@example.com")).email == "after-kill@example.com"

        # Killed after the checkout's ping, before the upsert: the save fails
        # cleanly and the dead connection does not go back to the pool.
        def kill_on_checkout(dbapi_connection, _record, _proxy):
            with admin.begin() as conn:
                conn.execute(text(_KILL[server].format(int(_backend_of(dbapi_connection, server)))))

        event.listen(store.engine, "checkout", kill_on_checkout)
        record = full_record(email="mid-save@example.com")
        with pytest.raises(StorageError) as info:
            store.save(record)
        assert isinstance(info.value.__cause__, DBAPIError) and info.value.__cause__.connection_invalidated
        assert record.refresh_token not in str(info.value)
        event.remove(store.engine, "checkout", kill_on_checkout)
        assert store.save(full_record(email="recovered@example.com")).email == "recovered@example.com"
        assert store.get(full_record().sub).email == "recovered@example.com"
    finally:
        store.drop_schema()
        store.close()
        admin.dispose()


def _backend_of(connection, server: str) -> int:
    cursor = connection.cursor()
    try:
        cursor.execute(_BACKEND_ID[server])
        (backend,) = cursor.fetchone()
    finally:
        cursor.close()
    connection.rollback()
    return backend


def test_save_converts_values_as_the_column_types_would(mariadb_url, unique_name):
    """On MySQL, sub goes out as UTF-8 bytes and comes back as text, floats stay floats (as through Core)."""
    store = SQLTokenStore(url=mariadb_url, table=unique_name)
    try:
        sub = "ünïcode-sub ✓"
        saved = store.save(full_record(sub=sub, created_at=1_700_000_000))
        assert saved.sub == sub and type(saved.created_at) is float
        assert saved == store.get(sub)
        with store.engine.connect() as conn:
            raw_sub = conn.exec_driver_sql(f"SELECT sub FROM {unique_name}").scalar()
        assert raw_sub == sub.encode("utf-8")
    finally:
        store.drop_schema()
        store.close()


def test_transient_driver_errors_of_save_are_retried(sqlite_url, monkeypatch):
    """The driver's "database is locked" on the upsert rolls back and is retried; other errors are not."""
    store = SQLTokenStore(url=sqlite_url)
    store.save(full_record())
    failures = iter([sqlite3.OperationalError("database is locked")] * 2)
    attempts: list[str] = []

    def flaky(_conn, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith("INSERT"):
            attempts.append(statement)
            failure = next(failures, None)
            if failure is not None:
                raise failure

    event.listen(store.engine, "before_cursor_execute", flaky)
    monkeypatch.setattr(sql_store.time, "sleep", lambda _seconds: None)
    assert store.save(full_record(email="retried@example.com")).email == "retried@example.com"
    assert len(attempts) == 3
    failures = iter([sqlite3.OperationalError("disk I/O error")])
    with pytest.raises(StorageError):
        store.save(full_record(email="not-retried@example.com"))
    assert len(attempts) == 4
    assert store.get(full_record().sub).email == "retried@example.com"
    store.close()


def test_a_value_that_does_not_convert_is_a_storage_error(sqlite_url):
    """As through Core: a bind conversion failure is a StorageError, and its messages do not carry the value."""
    store = SQLTokenStore(url=sqlite_url)
    with pytest.raises(StorageError) as info:
        store.save(full_record(refresh_token_issued_at="1//rt-SECRET-as-a-time"))
    assert "SECRET" not in str(info.value) and "SECRET" not in str(info.value.__cause__)
    store.close()


_SQLITE_MODE_CHILD = """
import os, stat, sys
os.umask(int(sys.argv[2], 8))
from tornado_signin.testing import full_record
from tornado_signin_backends.sql import SQLTokenStore
store = SQLTokenStore(url="sqlite:///" + sys.argv[1])
store.save(full_record())
for suffix in ("", "-wal", "-shm", ".lock"):
    print(suffix or "db", oct(stat.S_IMODE(os.stat(sys.argv[1] + suffix).st_mode)))
store.close()
"""


@pytest.mark.parametrize("umask", ["022", "002", "000"])
def test_sqlite_database_wal_and_shm_are_private_whatever_the_umask(tmp_path, umask):
    """The database, -wal and -shm files hold emails and ciphertext: 0600 even under a permissive umask."""
    import subprocess
    import sys

    path = tmp_path / "tokens.sqlite3"
    result = subprocess.run([sys.executable, "-c", _SQLITE_MODE_CHILD, str(path), umask],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    modes = dict(line.split() for line in result.stdout.splitlines())
    assert modes == {"db": "0o600", "-wal": "0o600", "-shm": "0o600", ".lock": "0o600"}


def test_sqlite_file_readable_by_others_is_reported(tmp_path, caplog):
    path = tmp_path / "old.sqlite3"
    sqlite3.connect(path).close()
    os.chmod(path, 0o644)
    store = SQLTokenStore(url=f"sqlite:///{path}")
    try:
        with caplog.at_level("WARNING"):
            store.save(full_record())
    finally:
        store.close()
    assert any("accessible to other users" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
