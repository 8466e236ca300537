"""nixpkgs' ``test_driver.logger``: one logger, Vouch's log, under the
names scripts and type stubs use."""

from vouch_driver.symbols import Log, LogLevel

AbstractLogger = Log
CompositeLogger = Log
TerminalLogger = Log

__all__ = ["AbstractLogger", "CompositeLogger", "Log", "LogLevel", "TerminalLogger"]
