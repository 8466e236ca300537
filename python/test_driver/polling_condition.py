"""nixpkgs' ``test_driver.polling_condition``."""

from vouch_driver.symbols import PollingCondition, PollingConditionError

__all__ = ["PollingCondition", "PollingConditionError"]
