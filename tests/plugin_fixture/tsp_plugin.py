"""A third party's token store: a dict behind a lock, merging with ``merge_records``.

``NaiveStore`` is what the contract kit must reject: it overwrites instead of merging.
"""

import threading

from tornado_signin.store import TokenStore, merge_records, revoked_record

__all__ = ["Store", "NaiveStore"]


class Store(TokenStore):
    def __init__(self, *, label="thirdparty"):
        self.label = label
        self._records = {}
        self._lock = threading.Lock()

    def get(self, sub):
        with self._lock:
            return self._records.get(sub)

    def save(self, record):
        with self._lock:
            merged = merge_records(self._records.get(record.sub), record)
            self._records[record.sub] = merged
            return merged

    def delete(self, sub):
        with self._lock:
            return self._records.pop(sub, None) is not None

    def mark_revoked(self, sub, revoked_at, *, if_refresh_token):
        with self._lock:
            stored = self._records.get(sub)
            if stored is None or stored.refresh_token != if_refresh_token:
                return False
            self._records[sub] = revoked_record(stored, revoked_at)
            return True

    def delete_if(self, sub, *, if_refresh_token):
        with self._lock:
            stored = self._records.get(sub)
            if stored is None or stored.refresh_token != if_refresh_token:
                return False
            del self._records[sub]
            return True

    def records(self):
        with self._lock:
            return iter(list(self._records.values()))


class NaiveStore(Store):
    def save(self, record):
        with self._lock:
            merged = merge_records(None, record)
            self._records[record.sub] = merged
            return merged
