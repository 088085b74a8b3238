"""``memory``: a process-local token store for tests and demos. Nothing survives a restart."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from tornado_signin.store import TokenRecord, TokenStore, merge_records, revoked_record

__all__ = ["MemoryTokenStore"]


class MemoryTokenStore(TokenStore):
    """Keep records in a dict guarded by a lock. Takes no options."""

    def __init__(self) -> None:
        self._records: dict[str, TokenRecord] = {}
        self._lock = threading.Lock()

    def get(self, sub: str) -> TokenRecord | None:
        with self._lock:
            return self._records.get(sub)

    def save(self, record: TokenRecord) -> TokenRecord:
        with self._lock:
            merged = merge_records(self._records.get(record.sub), record)
            self._records[record.sub] = merged
            return merged

    def delete(self, sub: str) -> bool:
        with self._lock:
            return self._records.pop(sub, None) is not None

    def mark_revoked(self, sub: str, revoked_at: float, *, if_refresh_token: str | None) -> bool:
        with self._lock:
            stored = self._records.get(sub)
            if stored is None or stored.refresh_token != if_refresh_token:
                return False
            self._records[sub] = revoked_record(stored, revoked_at)
            return True

    def delete_if(self, sub: str, *, if_refresh_token: str | None) -> bool:
        with self._lock:
            stored = self._records.get(sub)
            if stored is None or stored.refresh_token != if_refresh_token:
                return False
            del self._records[sub]
            return True

    def records(self) -> Iterator[TokenRecord]:
        with self._lock:
            snapshot = list(self._records.values())
        return iter(snapshot)
