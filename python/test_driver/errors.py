"""nixpkgs' ``test_driver.errors``."""

from vouch_driver.bridge import MachineError, RequestedAssertionFailed

__all__ = ["MachineError", "RequestedAssertionFailed"]
