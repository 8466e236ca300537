"""The globals a nixpkgs test script sees, built on the Vouch bridge, with
the names, signatures and semantics of today's nixpkgs driver (older forms
still accepted where they differ)."""

from __future__ import annotations

import datetime as dt
import enum
import os
import pathlib
import sys
import time
import unittest
from collections.abc import Callable, Iterable
from math import isfinite
from typing import Any, NoReturn

from .bridge import NotSupportedByVouch, RequestedAssertionFailed, bridge
from .durations import FIFTEEN_MINUTES, python_float, seconds
from .machine import BaseMachine, Machine, NspawnMachine, QemuMachine, make_machine
from .messages import message


class _Nested:
    """A log section in Vouch's log (and, for subtests, a JUnit case)."""

    def __init__(self, title: str, machine: str | None = None, subtest: bool = False) -> None:
        self.title = title
        self.machine = machine
        self.subtest = subtest

    def __enter__(self) -> _Nested:
        bridge().call("begin_section", title=self.title, machine_name=self.machine, subtest=bool(self.subtest))
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        failure = None
        if exc is not None:
            failure = f"{exc_type.__name__}: {exc}" if not isinstance(exc, KeyboardInterrupt) else "interrupted"
        bridge().call("end_section", failure=failure)
        return False


class _Subtest(_Nested):
    """``with subtest(name)``: on failure, nixpkgs logs
    ``Test "NAME" failed with error: "..."`` and lets the exception go on."""

    def __init__(self, name: object, logger: Log) -> None:
        super().__init__(str(name), subtest=True)
        self.name = str(name)
        self.logger = logger

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc is not None and isinstance(exc, Exception):
            self.logger.log_test_error(message("subtestFailed", name=self.name, error=exc))
        return super().__exit__(exc_type, exc, tb)


class LogLevel(enum.IntEnum):
    DEBUG = 1
    INFO = 2
    WARNING = 3
    ERROR = 4


class Log:
    """nixpkgs' ``log`` (its AbstractLogger): messages and nested sections in
    Vouch's log.  As in nixpkgs, ``error`` logs and then ends the test."""

    level: LogLevel

    def __init__(self) -> None:
        self.level = LogLevel.INFO

    def _send(self, level: str, args: Iterable[object]) -> None:
        bridge().call("log", message=" ".join(str(a) for a in args), level=level, machine_name=None)

    def log(self, message: object, attributes: dict[str, str] | None = None) -> None:
        self._send("info", [message])

    def info(self, *args: object) -> None:
        if self.level <= LogLevel.INFO:
            self._send("info", args)

    def debug(self, *args: object) -> None:
        if self.level <= LogLevel.DEBUG:
            self._send("info", args)

    def warning(self, *args: object) -> None:
        if self.level <= LogLevel.WARNING:
            self._send("warning", args)

    def error(self, *args: object) -> NoReturn:
        self._send("error", args)
        sys.exit(1)

    def log_test_error(self, *args: object) -> None:
        self._send("error", args)

    def log_serial(self, message: object, machine: object) -> None:
        bridge().call("log", message=str(message), level="info", machine_name=str(machine))

    def print_serial_logs(self, enable: bool) -> None:
        bridge().call("serial_stdout", on=bool(enable))

    def set_log_level(self, level: int) -> None:
        self.level = LogLevel(level)

    def nested(self, message: object, attributes: dict[str, str] | None = None) -> _Nested:
        return _Nested(str(message))

    def subtest(self, name: object, attributes: dict[str, str] | None = None) -> _Subtest:
        return _Subtest(name, self)


class AssertionTester(unittest.TestCase):
    """`t`: unittest's assertions, failing the test like a failed command."""

    failureException = RequestedAssertionFailed

    def __init__(self) -> None:
        super().__init__(methodName="runTest")

    def runTest(self) -> None:
        pass

    def assertRaises(self, expected_exception: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N802
        """unittest's, typed loosely for the type check: scripts reuse one
        ``as cm`` name for different exception classes."""
        return super().assertRaises(expected_exception, *args, **kwargs)


class _Remaining(float):
    """The seconds left, passed to a retried function.  Its truth value is
    false: an older function, written for ``fn(last_try)``, does not take
    every attempt for the last one."""

    def __bool__(self) -> bool:
        return False


def retry(fn: Callable[[Any], object], timeout_seconds: float | None = None, timeout: float | dt.timedelta | None = FIFTEEN_MINUTES) -> None:
    """Calls ``fn`` until it returns a true value, about once a second.

    Today's form, ``timeout`` a timedelta or None (no limit): ``fn`` gets the
    seconds left (None without a limit); no attempt starts after the
    deadline, and one that started before it counts.  The older forms,
    ``timeout_seconds=`` or a number of seconds as ``timeout``: ``fn`` gets
    ``last_try`` (False, then True for one last call after the deadline).
    Raises RequestedAssertionFailed with nixpkgs' "action timed out" text."""
    if timeout_seconds is not None and timeout is not FIFTEEN_MINUTES:
        raise TypeError(message("retryBothTimeouts"))
    start = time.monotonic()
    if timeout_seconds is not None or (isinstance(timeout, (int, float)) and not isinstance(timeout, bool)):
        limit = seconds(timeout_seconds if timeout_seconds is not None else timeout, allow_none=False)
        while time.monotonic() - start < limit:
            if fn(False):
                return
            time.sleep(1)
        if fn(True):
            return
        raise RequestedAssertionFailed("timeout", message(
            "actionTimedOut", elapsed=f"{time.monotonic() - start:.2f}",
            timeout=timeout_seconds if timeout_seconds is not None else timeout))
    limit = seconds(timeout)
    while True:
        remaining = None if limit is None else limit - (time.monotonic() - start)
        if remaining is not None and remaining <= 0:
            raise RequestedAssertionFailed("timeout", message(
                "actionTimedOut", elapsed=f"{time.monotonic() - start:.2f}", timeout=python_float(limit)))
        if fn(None if remaining is None else _Remaining(remaining)):
            return
        left = None if limit is None else limit - (time.monotonic() - start)
        time.sleep(1 if left is None else max(0, min(1, left)))


class PollingConditionError(Exception):
    """A polling condition failed (nixpkgs' class of the same name)."""


class PollingCondition:
    """A condition checked before machine commands while it is active."""

    def __init__(self, condition: Callable[[], object], log: Log, interval: float = 2.0, description: str | None = None) -> None:
        self.condition = condition
        self.interval = interval
        self.seconds_interval = interval
        self.log = log
        if description is None:
            description = condition.__doc__ or condition.__name__
        self.description = str(description)
        self.last_called = float("-inf")
        self.entry_count = 0

    @property
    def entered(self) -> bool:
        return self.entry_count > 0

    @property
    def overdue(self) -> bool:
        return self.last_called + self.interval < time.monotonic()

    def __enter__(self) -> None:
        self.entry_count += 1

    def __exit__(self, *_: object) -> None:
        self.entry_count -= 1
        self.last_called = time.monotonic()

    def status_message(self, ok: bool) -> str:
        return f"Polling condition {'succeeded' if ok else 'failed'}: {self.description}"

    def check(self, force: bool = False) -> bool:
        if (self.entered or not self.overdue) and not force:
            return True
        with self, self.log.nested(f"Checking polling condition {self.description!r}"):
            since = time.monotonic() - self.last_called
            self.log.info(f"Time since last: {since:.2f}s" if isfinite(since) else "(not called yet)")
            try:
                result = self.condition()
            except Exception:
                result = False
            result = result is None or result
            self.log.info(self.status_message(result))
            return result

    def maybe_raise(self) -> None:
        if not self.check():
            raise PollingConditionError(message("pollingConditionFailed", description=self.description))


class VLan:
    """A VLAN of the test (`vlan1`, ...)."""

    nr: int

    def __init__(self, nr: int, info: dict[str, Any]) -> None:
        self.nr = nr
        self._socket_dir = info.get("socketDirectory")

    @property
    def socket_dir(self) -> pathlib.Path:
        """The VLAN's vde_switch socket directory (VDE networks only)."""
        if self._socket_dir is None:
            raise NotSupportedByVouch("VLan.socket_dir", "a TAP network (\"network\": \"tap\") has no VDE switch")
        return pathlib.Path(self._socket_dir)

    def __repr__(self) -> str:
        return f"<VLan {self.nr}>"


class DebugAbstract:
    """nixpkgs' debug hook (``debug.breakpoint()``)."""

    def breakpoint(self, host: str = "127.0.0.1", port: int = 4444) -> None:
        pass


class DebugNop(DebugAbstract):
    """No debugger attached: ``breakpoint`` does nothing (use ``vouch repl`` to debug)."""


class Driver:
    """`driver`: the test run as the script sees it."""

    script_path: str | None
    tests: str
    out_dir: pathlib.Path
    global_timeout: float
    polling_conditions: list[PollingCondition]
    logger: Log
    debug: DebugAbstract
    vlans: list[VLan]

    def __init__(self, hello: dict[str, Any], script_path: str | None) -> None:
        self.script_path = script_path
        self.tests = ""
        if script_path:
            with open(script_path, encoding="utf-8") as f:
                self.tests = f.read()
        self.out_dir = pathlib.Path(hello["outputDirectory"]).resolve()
        self.global_timeout = hello["globalTimeout"]
        self.polling_conditions = []
        self.logger = Log()
        self.debug = DebugNop()
        self._machines = [self._make(info) for info in hello["machines"]]
        self.vlans = [VLan(v["nr"], v) for v in hello["vlans"]]

    def _make(self, info: Any) -> BaseMachine:
        if isinstance(info, str):  # an older Vouch's hello
            info = {"name": info}
        return make_machine(info, [self.check_polling_conditions], self.out_dir)

    @property
    def machines(self) -> list[BaseMachine]:
        """Every machine, VMs and containers, sorted by name."""
        return sorted(self._machines, key=lambda m: m.name)

    @property
    def machines_qemu(self) -> list[QemuMachine]:
        return [m for m in self.machines if isinstance(m, QemuMachine)]

    @property
    def machines_nspawn(self) -> list[NspawnMachine]:
        return [m for m in self.machines if isinstance(m, NspawnMachine)]

    def check_polling_conditions(self) -> None:
        for condition in self.polling_conditions:
            condition.maybe_raise()

    def start_all(self) -> None:
        bridge().call("start_all")

    def join_all(self) -> None:
        with self.logger.nested("wait for all VMs to finish"):
            for machine in self.machines:
                machine.wait_for_shutdown()

    def snapshot_all(self, name: str) -> None:
        """Saves every machine together (all paused before any is saved)."""
        bridge().call("snapshot_all", name=str(name))

    def restore_all(self, name: str) -> None:
        """Brings every machine back from `snapshot_all(name)`, resumed together."""
        bridge().call("restore_all", name=str(name))

    def serial_stdout_on(self) -> None:
        bridge().call("serial_stdout", on=True)

    def serial_stdout_off(self) -> None:
        bridge().call("serial_stdout", on=False)

    def create_machine(self, start_command: str | os.PathLike[str] | dict[str, Any], *, name: str | None = None, keep_machine_state: bool = False, **kwargs: Any) -> BaseMachine:
        """A VM booted by a nixpkgs start script, added to the test.

        ``keep_machine_state`` (and the older ``keep_vm_state``) is accepted:
        a Vouch run's state directory is always new."""
        if isinstance(start_command, dict):  # the oldest form: {"startCommand": ..., "name": ...}
            name = name or start_command.get("name")
            start_command = start_command.get("startCommand") or start_command.get("start_command")
        info = bridge().call("create_machine", start_command=os.path.abspath(str(start_command)),
                             name=None if name is None else str(name))
        machine = make_machine(info, [], self.out_dir)
        machine.keep_machine_state = bool(keep_machine_state or kwargs.get("keep_vm_state"))
        self._machines.append(machine)
        return machine

    def subtest(self, name: object) -> _Subtest:
        return _Subtest(name, self.logger)

    def dump_machine_ssh(self) -> None:
        """nixpkgs' SSH backdoor is not Vouch's: say how to get a shell instead."""
        if not self._machines:
            print("SSH backdoor enabled, but no machines defined")
            return
        for machine in self.machines:
            print(f"{machine.name}: no SSH backdoor in Vouch; use {machine.name}.shell_interact() or `vouch repl`")

    def polling_condition(self, fun_: Callable[[], object] | None = None, *, seconds_interval: float | None = None, interval: float | dt.timedelta | None = None, description: str | None = None) -> Any:
        if seconds_interval is not None and interval is not None:
            raise TypeError(message("pollingBothIntervals"))
        every = seconds(interval if interval is not None else seconds_interval)
        every = 2.0 if every is None else every
        driver = self

        class Poll:
            def __init__(self, fun):
                self.condition = PollingCondition(fun, driver.logger, every, description)

            def __enter__(self):
                driver.polling_conditions.append(self.condition)

            def __exit__(self, *_):
                removed = driver.polling_conditions.pop()
                assert removed is self.condition

            def wait(self, timeout_seconds=None, timeout=None):
                if timeout_seconds is not None and timeout is not None:
                    raise TypeError(message("waitBothTimeouts"))
                limit = timeout if timeout is not None else timeout_seconds
                limit = FIFTEEN_MINUTES if limit is None else dt.timedelta(seconds=seconds(limit))

                def attempt(remaining):
                    ok = self.condition.check(force=True)
                    if not ok:
                        driver.logger.info(f"({self.condition.description} failure not fatal yet)")
                    return ok

                with driver.logger.nested(f"waiting for {self.condition.description}"):
                    retry(attempt, timeout=limit)

        return Poll if fun_ is None else Poll(fun_)

    def test_script(self) -> None:
        """Runs the test script (from the interactive session)."""
        if not self.tests:
            raise RuntimeError("this session has no test script")
        with self.logger.nested("run the test script"):
            exec(compile(self.tests, self.script_path, "exec"), self.test_symbols())

    def run_tests(self) -> None:
        self.test_script()

    def test_symbols(self) -> dict[str, Any]:
        """The script's globals, named as in nixpkgs (plus the older names)."""
        symbols = dict(
            start_all=self.start_all,
            test_script=self.test_script,
            machines=self.machines,
            machines_qemu=self.machines_qemu,
            machines_nspawn=self.machines_nspawn,
            vlans=self.vlans,
            driver=self,
            log=self.logger,
            os=os,
            create_machine=self.create_machine,
            subtest=self.subtest,
            run_tests=self.run_tests,
            join_all=self.join_all,
            retry=retry,
            serial_stdout_off=self.serial_stdout_off,
            serial_stdout_on=self.serial_stdout_on,
            polling_condition=self.polling_condition,
            BaseMachine=BaseMachine,
            QemuMachine=QemuMachine,
            NspawnMachine=NspawnMachine,
            t=AssertionTester(),
            debug=self.debug,
            dump_machine_ssh=self.dump_machine_ssh,
            # Older nixpkgs names, and Vouch's own.
            startAll=self.start_all,
            runTestScript=self.test_script,
            Machine=Machine,
            snapshot_all=self.snapshot_all,
            restore_all=self.restore_all,
        )
        machines = self.machines
        for machine in machines:
            symbols[pythonize_name(machine.name)] = machine
        if len(machines) == 1 and "machine" not in {pythonize_name(m.name) for m in machines}:
            symbols["machine"] = machines[0]
        for vlan in self.vlans:
            symbols[f"vlan{vlan.nr}"] = vlan
        return symbols

    symbols = test_symbols


def pythonize_name(name: str) -> str:
    """`a-b` becomes `a_b`, and a leading digit becomes `_` (as in nixpkgs)."""
    out = "".join(c if (c.isascii() and (c.isalnum() or c == "_")) else "_" for c in name)
    if out and not (out[0].isascii() and (out[0].isalpha() or out[0] == "_")):
        out = "_" + out[1:]
    return out
