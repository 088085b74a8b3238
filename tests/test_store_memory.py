"""The contract kit against the ``memory`` backend (the reference implementation)."""

import pytest

from tornado_signin.store import load_store
from tornado_signin.testing import TokenStoreContract


class TestMemoryContract(TokenStoreContract):
    @pytest.fixture
    def store(self):
        store = load_store("memory")
        yield store
        store.close()
