"""Checks this package against Vouch's bridge table, without Vouch.

    python3 -m vouch_driver.selfcheck TABLE.json

Every public method of the script's machines and globals is called once
(through a recording bridge that answers with plausible results), so that
every request this side can send is checked against the table
(`bridge.check_request`: known call, right scope, every argument sent, of
its type), and every call in the table is made by some method.  Exits 1
with the problems listed; the suite runs this with the table Vouch itself
serves.
"""

import datetime as dt
import json
import os
import socket
import sys
import tempfile

from . import bridge as bridge_module
from .bridge import Bridge, BridgeContractError, NotSupportedByVouch, RequestedAssertionFailed, check_request
from .machine import UNSUPPORTED
from .symbols import Driver

# What each call answers in the recording: the shape the Python side expects.
_RESULTS = {
    "booted": True, "is_up": True, "execute": [0, ""], "succeed": "", "fail": "", "wait_until_succeeds": "",
    "wait_until_fails": "", "wait_for_console_text": "", "get_console_log": "", "systemctl": [0, ""],
    "start_job": [0, ""], "stop_job": [0, ""], "get_unit_info": {"ActiveState": "active"},
    "get_unit_property": "active", "copy_from_machine": "/out/x", "forward_port": 8080,
    "send_monitor_command": "(qemu) ", "shell_interact": "/nonexistent", "console_read": ["", "", 0],
    "screenshot": "/out/shot.png", "get_screen_text": "", "get_screen_text_variants": ["", "", ""], "get_tty_text": "",
    "get_window_names": [],
    "qmp_send": {"return": {}}, "qmp_next_event": {"event": "STOP"},
    "create_machine": {"name": "made", "backend": "qemu", "stateDirectory": "/run/vm-state-made", "sharedDirectory": "/run/shared-xchg"},
}


class Recorder(Bridge):
    """A bridge that checks and records requests instead of sending them."""

    def __init__(self, table):
        self.table = table
        self.made = []
        self.problems = []

    def call(self, method, /, machine=None, **args):
        try:
            check_request(self.table, method, machine, args)
        except BridgeContractError as e:
            self.problems.append(str(e))
        self.made.append(method)
        return _RESULTS.get(method)

    def socket_path_stream(self, path):
        ours, theirs = socket.socketpair()
        theirs.close()
        return ours


def exercise(driver, machine, problems):
    """Calls every public method once; collects what goes wrong."""
    def attempt(what, fn):
        try:
            fn()
        except (NotSupportedByVouch, RequestedAssertionFailed, SystemExit):
            pass
        except Exception as e:  # noqa: BLE001 - every problem is reported
            problems.append(f"{what}: {type(e).__name__}: {e}")

    with tempfile.NamedTemporaryFile() as f:
        calls = [
            ("start", lambda: machine.start()), ("start(allow_reboot)", lambda: machine.start(allow_reboot=True)),
            ("shutdown", machine.shutdown), ("crash", machine.crash), ("reboot", machine.reboot),
            ("wait_for_shutdown", machine.wait_for_shutdown), ("release", machine.release),
            ("execute", lambda: machine.execute("true")), ("execute unchecked", lambda: machine.execute("true", check_return=False)),
            ("execute timeout", lambda: machine.execute("true", timeout=None)),
            ("succeed", lambda: machine.succeed("a", "b", timeout=5)), ("fail", lambda: machine.fail("false")),
            ("wait_until_succeeds", lambda: machine.wait_until_succeeds("true")),
            ("wait_until_fails", lambda: machine.wait_until_fails("false", timeout=3)),
            ("wait_until_succeeds attempt_timeout", lambda: machine.wait_until_succeeds("true", timeout=dt.timedelta(seconds=9), attempt_timeout=dt.timedelta(seconds=2))),
            ("wait_for_unit_active_state", lambda: machine.wait_for_unit_active_state("x.service", "inactive", timeout=dt.timedelta(seconds=5))),
            ("wait_for_shutdown timeout", lambda: machine.wait_for_shutdown(timeout=dt.timedelta(seconds=5))),
            ("qmp_client.send", lambda: machine.qmp_client.send("query-status")),
            ("qmp_client.wait_for_event", lambda: machine.qmp_client.wait_for_event()),
            ("wait_for_qmp_event", lambda: machine.wait_for_qmp_event(lambda e: True, timeout=dt.timedelta(seconds=1))),
            ("create_machine", lambda: driver.create_machine("/bin/run-made-vm")),
            ("sleep", lambda: machine.sleep(1)),
            ("wait_for_unit", lambda: machine.wait_for_unit("x.service")),
            ("wait_for_unit user", lambda: machine.wait_for_unit("x.service", user="alice", timeout=5)),
            ("wait_for_file", lambda: machine.wait_for_file("/f")), ("wait_for_open_port", lambda: machine.wait_for_open_port(80)),
            ("wait_for_closed_port", lambda: machine.wait_for_closed_port(80, addr="127.0.0.1")),
            ("wait_for_open_unix_socket", lambda: machine.wait_for_open_unix_socket("/s", is_datagram=True)),
            ("wait_for_console_text", lambda: machine.wait_for_console_text("x")),
            ("get_console_log", machine.get_console_log), ("systemctl", lambda: machine.systemctl("status")),
            ("get_unit_info", lambda: machine.get_unit_info("x")), ("get_unit_property", lambda: machine.get_unit_property("x", "MainPID")),
            ("require_unit_state", lambda: machine.require_unit_state("x")), ("start_job", lambda: machine.start_job("x")),
            ("stop_job", lambda: machine.stop_job("x", user="alice")),
            ("copy_from_host", lambda: machine.copy_from_host(f.name, "/x")),
            ("copy_from_machine", lambda: machine.copy_from_machine("/x")), ("copy_from_vm", lambda: machine.copy_from_vm("/x", "d")),
            ("block", machine.block), ("unblock", machine.unblock), ("forward_port", machine.forward_port),
            ("forward_port any", lambda: machine.forward_port(host_port=None, guest_port=22)),
            ("send_key", lambda: machine.send_key("ret")), ("send_monitor_command", lambda: machine.send_monitor_command("info status")),
            ("send_key delay", lambda: machine.send_key("alt-f2", delay=dt.timedelta(milliseconds=5))),
            ("send_chars", lambda: machine.send_chars("Hi!\n")), ("send_console", lambda: machine.send_console("root\n")),
            ("screenshot", lambda: machine.screenshot("shot")), ("get_screen_text", machine.get_screen_text),
            ("get_screen_text_variants", machine.get_screen_text_variants),
            ("wait_for_text", lambda: machine.wait_for_text("x", timeout=dt.timedelta(seconds=1))),
            ("get_tty_text", lambda: machine.get_tty_text("1")), ("wait_until_tty_matches", lambda: machine.wait_until_tty_matches(1, "x")),
            ("dump_tty_contents", lambda: machine.dump_tty_contents(2)), ("wait_for_x", machine.wait_for_x),
            ("get_window_names", machine.get_window_names), ("wait_for_window", lambda: machine.wait_for_window("xterm", timeout=5)),
            ("snapshot_create", lambda: machine.snapshot_create("s")), ("snapshot_restore", lambda: machine.snapshot_restore("s")),
            ("booted", lambda: machine.booted), ("is_up", machine.is_up), ("log", lambda: machine.log("hi")),
            ("nested", lambda: machine.nested("n").__enter__()),
            ("shell_interact", machine.shell_interact), ("console_interact", machine.console_interact),
            ("start_all", driver.start_all), ("join_all", driver.join_all),
            ("snapshot_all", lambda: driver.snapshot_all("s")), ("restore_all", lambda: driver.restore_all("s")),
            ("serial_stdout_on", driver.serial_stdout_on), ("serial_stdout_off", driver.serial_stdout_off),
            ("subtest", lambda: driver.subtest("t").__exit__(None, None, None)),
            ("log.info", lambda: driver.logger.info("x")), ("log.warning", lambda: driver.logger.warning("x")),
            ("log.error", lambda: driver.logger.error("x")),
        ]
        for what, fn in calls:
            attempt(what, fn)
    from .runner import _report_failure
    try:
        raise RuntimeError("selfcheck")
    except RuntimeError as e:
        attempt("script_failed", lambda: _report_failure(e, None))


def message_keys():
    """(file, key) for every ``message("key"`` in this package."""
    import re
    here = os.path.dirname(os.path.abspath(__file__))
    found = []
    for name in sorted(os.listdir(here)):
        if name.endswith(".py") and name != "selfcheck.py":
            with open(os.path.join(here, name), encoding="utf-8") as f:
                found += [(name, key) for key in re.findall(r'message\(\s*"(\w+)"', f.read())]
    return found


def main(argv):
    if len(argv) != 2:
        sys.stderr.write(__doc__.strip() + "\n")
        return 2
    with open(argv[1], encoding="utf-8") as f:
        table = json.load(f)
    recorder = Recorder(table)
    bridge_module._bridge = recorder
    hello = {"machines": [{"name": "m", "backend": "qemu", "stateDirectory": "/run/vm-state-m", "sharedDirectory": "/run/shared-xchg"}], "vlans": [{"nr": 1, "socketDirectory": "/run/vde1.ctl"}], "network": "vde",
             "outputDirectory": "/out", "globalTimeout": 60, "table": table}
    recorder.made.append("hello")
    driver = Driver(hello, None)
    problems = recorder.problems
    exercise(driver, driver.machines[0], problems)
    missing = sorted(set(table["calls"]) - set(recorder.made))
    problems += [f"no method makes the table's call {name!r}" for name in missing]
    problems += [f"{path}: message {key!r} is not in the table's messages" for path, key in message_keys() if key not in table["messages"]]
    clash = sorted(set(table["calls"]) & set(UNSUPPORTED))
    problems += [f"{name!r} is in the table but the Python side calls it unsupported" for name in clash]
    if problems:
        sys.stderr.write("\n".join(problems) + "\n")
        return 1
    print(f"checked {len(set(recorder.made))} calls against a table of {len(table['calls'])}: all sent as the table says")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
