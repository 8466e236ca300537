"""nixpkgs' ``test_driver.driver``."""

from vouch_driver.symbols import Driver, pythonize_name

__all__ = ["Driver", "pythonize_name"]
