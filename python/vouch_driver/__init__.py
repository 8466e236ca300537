"""Vouch's nixpkgs compatibility layer: run nixpkgs test scripts unchanged.

The interpreter only relays calls; Vouch boots the machines and runs every
command.  See `python -m vouch_driver --help`.
"""

from .bridge import MachineError, NotSupportedByVouch, RequestedAssertionFailed, VouchError
from .machine import Machine

__all__ = ["Machine", "MachineError", "NotSupportedByVouch", "RequestedAssertionFailed", "VouchError"]
