"""The plugin author's own tests (run explicitly; the name keeps the project's pytest from collecting it)."""

import os

import pytest

from tornado_signin.store import load_store
from tornado_signin.testing import TokenStoreContract


class TestThirdPartyStore(TokenStoreContract):
    @pytest.fixture
    def store(self):
        store = load_store(os.environ.get("TSP_BACKEND", "thirdparty"), {"label": "under test"})
        yield store
        store.close()
