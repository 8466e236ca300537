"""nixpkgs' ``test_driver.vlan``."""

from vouch_driver.symbols import VLan

__all__ = ["VLan"]
