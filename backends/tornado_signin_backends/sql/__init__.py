"""``sql``: a token store in one SQL table, through SQLAlchemy 2.x Core.

Supported databases: SQLite (the demo default), PostgreSQL and MySQL/MariaDB.
Config (``store:`` section)::

    store:
      backend: sql
      url: postgresql+psycopg://app@db.internal/signin    # any SQLAlchemy URL
      table: tornado_signin_tokens                       # optional
      create_table: true                                 # optional
      engine_options: {pool_size: 5}                     # optional, passed to create_engine

The table (one row per ``sub``; :mod:`.schema`) is created on first use when
``create_table`` is true, or explicitly with :meth:`SQLTokenStore.create_schema`
(what a deployment without DDL rights at runtime runs once, e.g. from a
migration job)::

    SQLTokenStore(url=..., create_table=False).create_schema()

With ``create_table`` false nothing is created before that, not even a
missing SQLite file (its connection fails: "the database file … does not
exist"); :meth:`SQLTokenStore.has_schema` tells whether the table exists,
creating nothing.

A table an older release created lacks the later nullable columns
(``refresh_token_expires_at``, ``disabled_at``, ``enabled_at``,
``security_event``, ``security_event_at``): the same first use (or
``create_schema()``) adds them with ``ALTER TABLE … ADD COLUMN``.

Conditional writes (``mark_revoked``, ``delete_if``) are one conditional
``UPDATE``/``DELETE`` each, comparing the refresh token byte for byte (on
MySQL/MariaDB through ``BINARY``: its text collations ignore case and
trailing spaces).

The merge of :meth:`SQLTokenStore.save` is done by the database in one
statement (:mod:`.merge`): an ``INSERT … ON CONFLICT (sub) DO UPDATE`` (SQLite,
PostgreSQL) or ``INSERT … ON DUPLICATE KEY UPDATE`` (MySQL/MariaDB) whose CASEs
implement :func:`tornado_signin.store.merge_records`. It is built once per
store and executed on a Core Connection from the engine, so SQLAlchemy's
compiled cache compiles it once; engine events (``before_cursor_execute``,
``handle_error`` …) see it like every other statement. The merged row comes
back from the statement itself (``RETURNING``: SQLite >= 3.35, PostgreSQL) or,
on MySQL/MariaDB, is read back in the same transaction while the row lock is
held. Deadlocks and lock timeouts (possible on MySQL under concurrent upserts)
and SQLite "database is locked" are retried a few times; the statement is
idempotent per transaction.

Concurrency: one engine per store, shared by all threads (``pool_pre_ping``
on). SQLite files run in WAL mode with a 30 s busy timeout, so threads and
processes can write the same file, and their writes queue on a lock, across
processes on an ``flock`` of ``<database file>.lock`` (:mod:`.sqlite`). An
in-memory SQLite URL uses one shared connection guarded by a lock (one process
only, lost at exit). A new SQLite database file is created 0600 (its ``-wal``
and ``-shm`` files follow); an existing one that others can read is used with
a warning.

On MySQL/MariaDB the ``sub`` column is ``VARBINARY`` (UTF-8 bytes): the usual
text collations are case-insensitive or pad spaces, which would make two
distinct subs collide.

Every SQLAlchemy or OS error is raised as
:class:`~tornado_signin.errors.StorageError` (:mod:`.errors`); statement
parameters are hidden from SQLAlchemy's messages (``hide_parameters``) and no
message carries a token value.
"""

from .store import DEFAULT_TABLE, SQLTokenStore

__all__ = ["SQLTokenStore", "DEFAULT_TABLE"]
