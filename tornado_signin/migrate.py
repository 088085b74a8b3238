"""Copy every record from one token store to another, then verify the copy.

:func:`migrate` reads ``source.records()`` and writes each record through
``target.save``. Because ``save`` merges (a missing or older token never
replaces a newer one), the copy is idempotent: re-running it after an
interruption — or while the old deployment still writes to the source —
completes the job without ever making the target older. Then every source
``sub`` is looked up in the target and compared (refresh token and its issue
time).

Between two :class:`~tornado_signin.crypto.EncryptingStore` wrappers, records
flow as plaintext (the source decrypts, the target encrypts under its own
newest key), so a migration also re-encrypts. Between raw backends, the
ciphertext is copied as is and stays readable with the same keys.

``created_at`` is carried over: the merge keeps the incoming creation time
for a record the target does not have yet.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice

from .store import TokenRecord, TokenStore

__all__ = ["MigrationReport", "migrate", "same_store"]

log = logging.getLogger(__name__)

#: A SQLite URL on a file: its driver variant, the path, the query (as the config leaves it: absolute).
_SQLITE_FILE = re.compile(r"^sqlite(?:\+\w+)?:///(?!:memory:)(?!file:)([^?]+)(\?.*)?$")


def _canonical_options(backend: str, options: Mapping[str, object]) -> dict[str, object]:
    """Return ``options`` with the paths that name the store in canonical form (``./``, ``..``, symlinks resolved)."""
    canonical = dict(options)
    path = canonical.get("path")
    if backend == "file" and isinstance(path, str):
        canonical["path"] = os.path.realpath(path)
    url = canonical.get("url")
    match = _SQLITE_FILE.match(url) if backend == "sql" and isinstance(url, str) else None
    if match is not None:
        canonical["url"] = f"sqlite:///{os.path.realpath(match.group(1))}{match.group(2) or ''}"
    return canonical


def same_store(backend_a: str, options_a: Mapping[str, object], backend_b: str, options_b: Mapping[str, object]) -> bool:
    """Return True when the two store configurations name the same store (never for ``memory``).

    SQLite database paths and file-store folders are compared canonicalised
    (``./``, ``..`` and symlinks resolved; the config already made relative
    paths absolute under its folder); other options are compared as written.
    """
    if backend_a != backend_b or backend_a == "memory":
        return False
    return _canonical_options(backend_a, options_a) == _canonical_options(backend_b, options_b)


#: How many mismatching subs a report lists (the counts are always complete).
MAX_LISTED_MISMATCHES = 100


@dataclass
class MigrationReport:
    """The outcome of :func:`migrate`.

    ``copied``: records saved into the target. ``verified``: source records
    found in the target with the same refresh token and issue time.
    ``mismatched``: source records missing from the target or different there
    (``mismatched_subs`` lists the first of them; the target may legitimately
    hold a newer token if it was written meanwhile).
    """

    copied: int = 0
    verified: int = 0
    mismatched: int = 0
    mismatched_subs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every source record was found, the same, in the target."""
        return self.mismatched == 0


def _batches(records: Iterable[TokenRecord], size: int) -> Iterator[list[TokenRecord]]:
    iterator = iter(records)
    while batch := list(islice(iterator, size)):
        yield batch


def migrate(
    source: TokenStore,
    target: TokenStore,
    *,
    batch_size: int = 100,
    progress: Callable[[str, int], None] | None = None,
) -> MigrationReport:
    """Copy every record of ``source`` into ``target`` with ``target.save``, then verify; return the report.

    ``progress``, if given, is called after each batch of ``batch_size``
    records as ``progress("copy", copied_so_far)`` and then
    ``progress("verify", checked_so_far)``. Raise StorageError (or
    CryptoError) as the stores do; the copy done so far stays, and running
    :func:`migrate` again completes it.

    Example (what ``tornado-signin migrate --from old.yaml --to new.yaml`` does)::

        report = migrate(open_store(load_config("old.yaml"), create=False), open_store(load_config("new.yaml")),
                         progress=lambda stage, n: print(stage, n, file=sys.stderr))
        print(report)
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    report = MigrationReport()
    for batch in _batches(source.records(), batch_size):
        for record in batch:
            target.save(record)
            report.copied += 1
        log.debug("migrate: copied %s records", report.copied)
        if progress is not None:
            progress("copy", report.copied)

    checked = 0
    for batch in _batches(source.records(), batch_size):
        for record in batch:
            copy = target.get(record.sub)
            if (
                copy is not None
                and copy.refresh_token == record.refresh_token
                and copy.refresh_token_issued_at == record.refresh_token_issued_at
            ):
                report.verified += 1
            else:
                report.mismatched += 1
                if len(report.mismatched_subs) < MAX_LISTED_MISMATCHES:
                    report.mismatched_subs.append(record.sub)
                log.warning("migrate: record %s differs in the target", record.sub)
        checked += len(batch)
        if progress is not None:
            progress("verify", checked)
    log.info(
        "migrate: copied %s, verified %s, mismatched %s", report.copied, report.verified, report.mismatched
    )
    return report
