"""The globals a nixpkgs test script sees, built on the Vouch bridge."""

import os
import pathlib
import time
import unittest
from contextlib import contextmanager
from math import isfinite

from .bridge import NotSupportedByVouch, RequestedAssertionFailed, bridge
from .machine import Machine


class _Nested:
    """A log section in Vouch's log (and, for subtests, a JUnit case)."""

    def __init__(self, title, machine=None, subtest=False):
        self.title = title
        self.machine = machine
        self.subtest = subtest

    def __enter__(self):
        bridge().call("begin_section", title=self.title, machine_name=self.machine, subtest=bool(self.subtest))
        return self

    def __exit__(self, exc_type, exc, tb):
        failure = None
        if exc is not None:
            failure = f"{exc_type.__name__}: {exc}" if not isinstance(exc, KeyboardInterrupt) else "interrupted"
        bridge().call("end_section", failure=failure)
        return False


class Log:
    """nixpkgs' `log` object: messages and nested sections in Vouch's log."""

    def log(self, message, attributes=None):
        bridge().call("log", message=str(message), level="info", machine_name=None)

    info = log

    def warning(self, message, attributes=None):
        bridge().call("log", message=str(message), level="warning", machine_name=None)

    def error(self, message, attributes=None):
        bridge().call("log", message=str(message), level="error", machine_name=None)

    def log_test_error(self, message, attributes=None):
        self.error(message)

    def nested(self, message, attributes=None):
        return _Nested(str(message))

    def subtest(self, name, attributes=None):
        return _Nested(str(name), subtest=True)


class AssertionTester(unittest.TestCase):
    """`t`: unittest's assertions, failing the test like a failed command."""

    failureException = RequestedAssertionFailed

    def __init__(self):
        super().__init__(methodName="runTest")

    def runTest(self):
        pass


def retry(fn, timeout_seconds=900, timeout=None):
    """Calls fn(last_try) once a second until it returns True."""
    if timeout is not None:
        timeout_seconds = timeout
    start = time.monotonic()
    while time.monotonic() - start < timeout_seconds:
        if fn(False):
            return
        time.sleep(1)
    if not fn(True):
        raise RequestedAssertionFailed(
            "timeout", f"action timed out after {time.monotonic() - start:.2f} seconds (timeout={timeout_seconds})")


class PollingCondition:
    """A condition checked before machine commands while it is active."""

    def __init__(self, condition, log, seconds_interval=2.0, description=None):
        self.condition = condition
        self.seconds_interval = seconds_interval
        self.log = log
        if description is None:
            description = condition.__doc__ or condition.__name__
        self.description = str(description)
        self.last_called = float("-inf")
        self.entry_count = 0

    @property
    def entered(self):
        return self.entry_count > 0

    @property
    def overdue(self):
        return self.last_called + self.seconds_interval < time.monotonic()

    def __enter__(self):
        self.entry_count += 1

    def __exit__(self, *_):
        self.entry_count -= 1
        self.last_called = time.monotonic()

    def status_message(self, ok):
        return f"Polling condition {'succeeded' if ok else 'failed'}: {self.description}"

    def check(self, force=False):
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

    def maybe_raise(self):
        if not self.check():
            raise RequestedAssertionFailed("assertionFailed", self.status_message(False))


class VLan:
    """A VLAN of the test (`vlan1`, ...)."""

    def __init__(self, nr, info):
        self.nr = nr
        self._socket_dir = info.get("socketDirectory")

    @property
    def socket_dir(self):
        """The VLAN's vde_switch socket directory (VDE networks only)."""
        if self._socket_dir is None:
            raise NotSupportedByVouch("VLan.socket_dir", "a TAP network (\"network\": \"tap\") has no VDE switch")
        return pathlib.Path(self._socket_dir)

    def __repr__(self):
        return f"<VLan {self.nr}>"


class Driver:
    """`driver`: the test run as the script sees it."""

    def __init__(self, hello, script_path):
        self.script_path = script_path
        self.tests = ""
        if script_path:
            with open(script_path, encoding="utf-8") as f:
                self.tests = f.read()
        self.out_dir = hello["outputDirectory"]
        self.global_timeout = hello["globalTimeout"]
        self.polling_conditions = []
        self.logger = Log()
        self.machines = [Machine(m, [self.check_polling_conditions]) for m in hello["machines"]]
        self.vlans = [VLan(v["nr"], v) for v in hello["vlans"]]

    def check_polling_conditions(self):
        for condition in self.polling_conditions:
            condition.maybe_raise()

    def start_all(self):
        bridge().call("start_all")

    def join_all(self):
        with self.logger.nested("wait for all machines to finish"):
            for machine in self.machines:
                machine.wait_for_shutdown()

    def snapshot_all(self, name):
        """Saves every machine together (all paused before any is saved)."""
        bridge().call("snapshot_all", name=str(name))

    def restore_all(self, name):
        """Brings every machine back from `snapshot_all(name)`, resumed together."""
        bridge().call("restore_all", name=str(name))

    def serial_stdout_on(self):
        bridge().call("serial_stdout", on=True)

    def serial_stdout_off(self):
        bridge().call("serial_stdout", on=False)

    def create_machine(self, *args, **kwargs):
        raise NotSupportedByVouch("create_machine")

    def subtest(self, name):
        return _Nested(str(name), subtest=True)

    def polling_condition(self, fun_=None, *, seconds_interval=2.0, description=None):
        driver = self

        class Poll:
            def __init__(self, fun):
                self.condition = PollingCondition(fun, driver.logger, seconds_interval, description)

            def __enter__(self):
                driver.polling_conditions.append(self.condition)

            def __exit__(self, *_):
                removed = driver.polling_conditions.pop()
                assert removed is self.condition

            def wait(self, timeout=900):
                def attempt(last):
                    if last:
                        driver.logger.info(f"Last chance for {self.condition.description}")
                    ok = self.condition.check(force=True)
                    if not ok and not last:
                        driver.logger.info(f"({self.condition.description} failure not fatal yet)")
                    return ok

                with driver.logger.nested(f"waiting for {self.condition.description}"):
                    retry(attempt, timeout_seconds=timeout)

        return Poll if fun_ is None else Poll(fun_)

    def test_script(self):
        """Runs the test script (from the interactive session)."""
        if not self.tests:
            raise RuntimeError("this session has no test script")
        with self.logger.nested("run the test script"):
            exec(compile(self.tests, self.script_path, "exec"), self.symbols())

    def run_tests(self):
        self.test_script()

    def symbols(self):
        """The script's globals, named as in nixpkgs."""
        symbols = dict(
            start_all=self.start_all,
            startAll=self.start_all,
            test_script=self.test_script,
            run_tests=self.run_tests,
            runTestScript=self.test_script,
            machines=self.machines,
            vlans=self.vlans,
            driver=self,
            log=self.logger,
            os=os,
            create_machine=self.create_machine,
            subtest=self.subtest,
            join_all=self.join_all,
            retry=retry,
            serial_stdout_off=self.serial_stdout_off,
            serial_stdout_on=self.serial_stdout_on,
            polling_condition=self.polling_condition,
            snapshot_all=self.snapshot_all,
            restore_all=self.restore_all,
            Machine=Machine,
            BaseMachine=Machine,
            t=AssertionTester(),
        )
        for machine in self.machines:
            symbols[pythonize_name(machine.name)] = machine
        if len(self.machines) == 1:
            symbols["machine"] = self.machines[0]
        for vlan in self.vlans:
            symbols[f"vlan{vlan.nr}"] = vlan
        return symbols


def pythonize_name(name):
    """`a-b` becomes `a_b`, and a leading digit becomes `_` (as in nixpkgs)."""
    out = "".join(c if (c.isascii() and (c.isalnum() or c == "_")) else "_" for c in name)
    if out and not (out[0].isascii() and (out[0].isalpha() or out[0] == "_")):
        out = "_" + out[1:]
    return out
