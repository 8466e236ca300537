"""nixpkgs' ``test_driver.debug``."""

from vouch_driver.symbols import DebugAbstract, DebugNop

__all__ = ["DebugAbstract", "DebugNop"]
