"""nixpkgs' older ``test_driver.qmp`` (before the ``machine`` package)."""

from vouch_driver.qmp import QMPAPIError, QMPSession

__all__ = ["QMPAPIError", "QMPSession"]
