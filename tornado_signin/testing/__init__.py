"""Test kits shipped with tornado-signin, for the built-in backends and for plugin authors.

- :mod:`tornado_signin.testing.store` — the token-store contract suite
  (:class:`TokenStoreContract`) and its helpers;
- :mod:`tornado_signin.testing.hub` — the confirmation-hub contract suite
  (:class:`ConfirmationHubContract`).

The public names are re-exported here, so plugin tests keep importing them
from the package::

    from tornado_signin.testing import ConfirmationHubContract, TokenStoreContract, assert_process_safe

Needs pytest (``pip install 'tornado-signin[test]'``).
"""

from .hub import ConfirmationHubContract
from .store import EDGE_SUBS, TokenStoreContract, assert_process_safe, contended_record, full_record

__all__ = ["TokenStoreContract", "full_record", "contended_record", "assert_process_safe", "EDGE_SUBS",
           "ConfirmationHubContract"]
