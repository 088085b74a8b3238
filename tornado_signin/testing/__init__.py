"""Test kits shipped with tornado-signin, for the built-in backends and for plugin authors.

- :mod:`tornado_signin.testing.store` — the token-store contract suite
  (:class:`TokenStoreContract`) and its helpers.

The public names are re-exported here, so plugin tests keep importing them
from the package::

    from tornado_signin.testing import TokenStoreContract, assert_process_safe

Needs pytest (``pip install 'tornado-signin[test]'``).
"""

from .store import EDGE_SUBS, TokenStoreContract, assert_process_safe, contended_record, full_record

__all__ = ["TokenStoreContract", "full_record", "contended_record", "assert_process_safe", "EDGE_SUBS"]
