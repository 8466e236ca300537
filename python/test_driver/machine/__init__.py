"""nixpkgs' ``test_driver.machine``: the machine classes and ``retry``."""

from vouch_driver.machine import BaseMachine, Machine, NspawnMachine, QemuMachine, RemoteMachine
from vouch_driver.symbols import retry

__all__ = ["BaseMachine", "Machine", "NspawnMachine", "QemuMachine", "RemoteMachine", "retry"]
