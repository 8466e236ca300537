# Today's nixpkgs driver API (2026), as scripts written against it use it:
# imports from test_driver, timedelta timeouts, nixpkgs' exact failure
# texts and exception classes, the newer calls and their semantics.
import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path

from test_driver.driver import Driver
from test_driver.errors import MachineError, RequestedAssertionFailed
from test_driver.logger import AbstractLogger
from test_driver.machine import BaseMachine, NspawnMachine, QemuMachine, retry
from test_driver.machine.qmp import QMPAPIError
from test_driver.polling_condition import PollingConditionError
from test_driver.vlan import VLan

s = dt.timedelta

with subtest("names and types as nixpkgs' stubs declare them"):
    assert isinstance(one_two, QemuMachine) and isinstance(one_two, BaseMachine)
    assert not isinstance(one_two, NspawnMachine)
    t.assertEqual(repr(one_two), "<QemuMachine 'one_two'>")
    assert machines == [one_two] and machines_qemu == [one_two] and machines_nspawn == []
    assert machine is one_two  # the only node, under nixpkgs' alias
    assert isinstance(driver, Driver) and isinstance(log, AbstractLogger)
    assert all(isinstance(v, VLan) for v in vlans)
    assert isinstance(driver.out_dir, Path) and driver.out_dir.is_dir()
    assert issubclass(RequestedAssertionFailed, AssertionError) and issubclass(MachineError, Exception)
    debug.breakpoint()  # no debugger attached: does nothing

with subtest("the host name NixOS gives node one_two"):
    one_two.wait_for_unit("multi-user.target", timeout=s(minutes=5))
    t.assertEqual(one_two.succeed("hostname").strip(), "onetwo")
    one_two.succeed("getent hosts one_two", "getent hosts onetwo")

with subtest("nixpkgs' failure texts and classes"):
    try:
        one_two.succeed("exit 42")
        raise Exception("succeed did not raise")
    except RequestedAssertionFailed as e:
        assert isinstance(e, AssertionError)
        t.assertIn("command `exit 42` failed (exit code 42)", str(e))
    with t.assertRaises(RequestedAssertionFailed) as cm:
        one_two.fail("true")
    t.assertIn("command `true` unexpectedly succeeded", str(cm.exception))
    with t.assertRaises(RequestedAssertionFailed) as cm:
        one_two.wait_for_file("/nonexistent", timeout=s(seconds=2))
    t.assertIn("action timed out after ", str(cm.exception))
    t.assertIn(" seconds (timeout=2.0)", str(cm.exception))
    with t.assertRaises(RequestedAssertionFailed) as cm:
        one_two.require_unit_state("multi-user.target", "inactive")
    t.assertIn("Expected unit 'multi-user.target' to to be in state 'inactive' but it is in state 'active'", str(cm.exception))
    with t.assertRaises(RequestedAssertionFailed) as cm:
        one_two.wait_for_unit("no-such-thing.service", timeout=s(seconds=60))
    t.assertIn('unit "no-such-thing.service" is inactive and there are no pending jobs', str(cm.exception))
    with t.assertRaises(TypeError) as cm:
        one_two.succeed("true", timeout=True)
    t.assertEqual(str(cm.exception), "expected a duration, got bool: True")
    with t.assertRaises(TypeError) as cm:
        one_two.sleep(1, duration=s(seconds=1))
    t.assertEqual(str(cm.exception), "sleep() got both 'duration' and 'secs'. Pass only 'duration'")

with subtest("durations: timedelta, seconds, None"):
    t.assertEqual(one_two.succeed("echo hi", timeout=s(seconds=30)), "hi\n")
    t.assertEqual(one_two.execute("echo no limit", timeout=None), (0, "no limit\n"))
    t.assertEqual(one_two.wait_until_succeeds("true", timeout=s(seconds=30)), "")
    one_two.sleep(s(milliseconds=200))
    one_two.sleep(duration=s(milliseconds=200))
    one_two.sleep(1)
    one_two.wait_for_open_port(80, timeout=s(minutes=2))
    one_two.wait_for_closed_port(9, timeout=30)

with subtest("attempt_timeout bounds each attempt"):
    with t.assertRaises(RequestedAssertionFailed):
        one_two.wait_until_succeeds("echo try >> /tmp/attempts; exec sleep 600 >/dev/null",
                                    timeout=s(seconds=15), attempt_timeout=s(seconds=2))
    attempts = int(one_two.succeed("wc -l < /tmp/attempts"))
    assert attempts >= 2, f"tried {attempts} times: each attempt should have been cut at 2 s"

with subtest("wait_for_unit_active_state"):
    one_two.succeed("systemd-run --unit=probe.service sh -c 'sleep 4'")
    one_two.wait_for_unit_active_state("probe.service", "active", timeout=s(seconds=30))
    one_two.wait_for_unit_active_state("probe.service", "inactive", timeout=s(seconds=60))

with subtest("QMP and the human monitor"):
    reply = one_two.qmp_client.send("query-status")
    t.assertEqual(reply["return"]["status"], "running")
    with t.assertRaises(QMPAPIError) as cm:
        one_two.qmp_client.send("this-command-does-not-exist")
    t.assertEqual(cm.exception.class_name, "CommandNotFound")
    assert cm.exception.description and cm.exception.transaction_id is None
    t.assertIn("[CommandNotFound]", str(cm.exception))
    out = one_two.send_monitor_command("info status")
    assert out.endswith("(qemu) "), repr(out)
    t.assertIn("VM status: running\r\n", out)
    one_two.qmp_client.send("stop")
    one_two.wait_for_qmp_event(lambda e: e["event"] == "STOP", timeout=s(seconds=30))
    one_two.qmp_client.send("cont")
    resumed = one_two.wait_for_qmp_event(lambda e: e["event"] == "RESUME", timeout=s(seconds=30))
    t.assertEqual(resumed["event"], "RESUME")
    t.assertEqual(one_two.succeed("echo running again"), "running again\n")

with subtest("retry: today's form and the older one"):
    given = []
    retry(lambda remaining: given.append(remaining) or True, timeout=None)
    t.assertEqual(given, [None])
    tries = []

    def slow_failure(remaining):
        assert remaining is not None and remaining > 0
        tries.append(remaining)
        time.sleep(0.05)
        return False

    with t.assertRaises(RequestedAssertionFailed) as cm:
        retry(slow_failure, timeout=s(seconds=0.01))
    t.assertEqual(len(tries), 1)  # no attempt starts after the deadline
    t.assertIn("(timeout=0.01)", str(cm.exception))
    late = []
    retry(lambda remaining: late.append(remaining) or time.sleep(0.02) or True, timeout=s(seconds=0.01))
    t.assertEqual(len(late), 1)  # one that began in time counts
    never = []
    with t.assertRaises(RequestedAssertionFailed):
        retry(lambda remaining: never.append(remaining) or True, timeout=s(0))
    t.assertEqual(never, [])
    legacy = []
    retry(lambda last_try: legacy.append(last_try) or len(legacy) == 2, timeout_seconds=30)
    t.assertEqual(legacy, [False, False])
    with t.assertRaises(TypeError) as cm:
        retry(lambda _: True, timeout_seconds=5, timeout=s(seconds=5))
    t.assertIn("retry() got both 'timeout' and 'timeout_seconds'", str(cm.exception))

with subtest("polling conditions"):
    @polling_condition(interval=s(0))
    def marker_exists():
        one_two.succeed("test -e /tmp/marker")

    one_two.succeed("touch /tmp/marker")
    with marker_exists:
        one_two.succeed("true")
    one_two.succeed("rm /tmp/marker")
    with t.assertRaises(PollingConditionError) as cm:
        with marker_exists:
            one_two.succeed("true")
    t.assertEqual(str(cm.exception), "Polling condition failed: marker_exists")

with subtest("copy_from_vm to an absolute directory"):
    target = Path(tempfile.mkdtemp())
    one_two.succeed("echo payload > /root/abs.txt")
    one_two.copy_from_vm("/root/abs.txt", str(target))
    t.assertEqual((target / "abs.txt").read_text(), "payload\n")
    one_two.copy_from_machine("/root/abs.txt", target / "sub")
    t.assertEqual((target / "sub" / "abs.txt").read_text(), "payload\n")
    assert not (driver.out_dir / str(target).lstrip("/")).exists()
    shutil.rmtree(target)

# As in nixpkgs, a failing subtest is logged and its exception goes on.
caught = None
try:
    with subtest("a failing subtest"):
        one_two.succeed("exit 3")
except RequestedAssertionFailed as e:
    caught = e
assert caught is not None
