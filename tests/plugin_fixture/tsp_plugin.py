"""A third party's token store: a dict behind a lock, merging with ``merge_records``.

``NaiveStore`` is what the contract kit must reject: it overwrites instead of merging.
"""

import threading

from tornado_signin.store import TokenStore, merge_records

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

    def records(self):
        with self._lock:
            return iter(list(self._records.values()))


class NaiveStore(Store):
    def save(self, record):
        with self._lock:
            merged = merge_records(None, record)
            self._records[record.sub] = merged
            return merged
