"""nixpkgs' ``test_driver.machine.qmp``."""

from vouch_driver.qmp import QMPAPIError, QMPSession

__all__ = ["QMPAPIError", "QMPSession"]
