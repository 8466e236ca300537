# Exercises the nixpkgs Machine API as real nixpkgs tests use it.  No
# start_all() at first: machines boot on their first command, as in 43% of
# nixpkgs tests.
import json
import os
import tempfile
from test_driver.errors import RequestedAssertionFailed

# Node names are mangled as in nixpkgs: "web-server" is web_server.
assert web_server.name == "web-server"
assert [m.name for m in machines] == ["web-server", "client"] or sorted(m.name for m in machines) == ["client", "web-server"]
assert vlan1.nr == 1 and [v.nr for v in vlans] == [1]
# A VDE network: the switch's socket directory, as nixpkgs' VLan has it.
assert vlan1.socket_dir.is_dir() and vlan1.socket_dir.name == "vde1.ctl", vlan1.socket_dir
assert not client.booted

with subtest("lazy boot and commands"):
    client.start(allow_reboot=True)  # a guest reboot resets the machine instead of ending it
    out = client.succeed("echo one", "echo two")  # several commands, outputs joined
    t.assertEqual(out, "one\ntwo\n")
    assert client.booted and client.is_up()
    status, output = client.execute("echo out; exit 3")
    t.assertEqual((status, output), (3, "out\n"))
    t.assertEqual(client.execute("echo hi", check_return=False), (-1, "hi\n"))
    client.fail("false", "exit 2")
    t.assertEqual(client.succeed("printf 'no newline'"), "no newline")
    t.assertEqual(client.succeed("head -c 3 /dev/zero | od -An -tx1").split(), ["00", "00", "00"])
    client.succeed("sleep 5", timeout=30)
    try:
        client.succeed("sleep 30", timeout=2)
        raise Exception("timeout did not fire")
    except Exception as e:
        assert "timed out" in str(e), str(e)
    t.assertEqual(client.succeed("echo still in sync"), "still in sync\n")
    # Output of a background process belongs to the command that started it (nixpkgs' semantics).
    t.assertEqual(client.succeed("(sleep 1; echo LATE) &"), "LATE\n")
    t.assertEqual(client.succeed("echo hi"), "hi\n")

with subtest("waits"):
    client.succeed("(sleep 2; touch /tmp/ready) >/dev/null 2>&1 &")
    client.wait_for_file("/tmp/ready", timeout=60)
    t.assertEqual(client.wait_until_succeeds("cat /tmp/ready && echo ok", timeout=30), "ok\n")
    client.succeed("(sleep 2; rm /tmp/ready) >/dev/null 2>&1 &")
    client.wait_until_fails("test -e /tmp/ready", timeout=30)
    client.sleep(1)

with subtest("systemd"):
    web_server.wait_for_unit("multi-user.target")
    web_server.wait_for_unit("nginx.service")
    web_server.wait_for_open_port(80)
    web_server.wait_for_open_port(80, addr="127.0.0.1", timeout=30)
    web_server.wait_for_open_unix_socket("/run/systemd/private", timeout=30)
    status, text = web_server.systemctl("is-active nginx")
    t.assertEqual((status, text), (0, "active\n"))
    info = web_server.get_unit_info("nginx.service")
    t.assertEqual(info["ActiveState"], "active")
    t.assertEqual(web_server.get_unit_property("nginx.service", "SubState"), "running")
    web_server.require_unit_state("nginx.service", "active")
    web_server.require_unit_state("nginx.service")
    status, _ = web_server.stop_job("nginx.service")
    t.assertEqual(status, 0)
    web_server.wait_for_closed_port(80, timeout=30)
    with t.assertRaises(Exception):
        web_server.require_unit_state("nginx.service", "active")
    status, _ = web_server.start_job("nginx.service")
    t.assertEqual(status, 0)
    web_server.wait_for_open_port(80, timeout=60)

with subtest("network by name, block and unblock"):
    start_all()
    client.succeed("ping -c 1 -W 5 web-server")
    t.assertIn("Welcome to nginx", client.succeed("wget -qO- http://web-server/"))
    web_server.block()
    client.fail("timeout 5 wget -qO- http://web-server/")
    web_server.unblock()
    client.wait_until_succeeds("timeout 5 wget -qO- http://web-server/", timeout=60)

with subtest("forward_port"):
    import urllib.request
    web_server.forward_port(host_port=18080 + os.getpid() % 1000, guest_port=80)
    page = urllib.request.urlopen(f"http://127.0.0.1:{18080 + os.getpid() % 1000}/", timeout=20).read().decode()
    t.assertIn("Welcome to nginx", page)

with subtest("files"):
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "note.txt")
        with open(src, "w") as f:
            f.write("from the host\n")
        client.copy_from_host(src, "/root/sub/note.txt")
        t.assertEqual(client.succeed("cat /root/sub/note.txt"), "from the host\n")
        client.copy_from_host_via_shell(src, "/root/shell-note.txt")
        t.assertEqual(client.succeed("cat /root/shell-note.txt"), "from the host\n")
    web_server.succeed("echo '{\"x\": 1}' > /root/data.json")
    web_server.copy_from_machine("/root/data.json", "copied")
    with open(os.path.join(driver.out_dir, "copied", "data.json")) as f:
        t.assertEqual(json.load(f), {"x": 1})
    web_server.copy_from_vm("/root/data.json")
    assert os.path.exists(os.path.join(driver.out_dir, "data.json"))

with subtest("console"):
    serial_stdout_off()
    web_server.succeed("echo conformance-marker-7 > /dev/ttyS0")
    t.assertEqual(web_server.wait_for_console_text(r"conformance-marker-\d", timeout=30), "conformance-marker-7")
    serial_stdout_on()
    assert "conformance-marker-7" in web_server.get_console_log()

with subtest("helpers: retry, polling_condition, log, nested subtests"):
    attempts = []

    def third_time(last_try):
        attempts.append(last_try)
        return len(attempts) >= 3

    retry(third_time, timeout_seconds=30)
    t.assertEqual(len(attempts), 3)

    @polling_condition(seconds_interval=0)
    def nginx_running():
        web_server.succeed("systemctl is-active nginx")

    with nginx_running:
        client.succeed("true")
        client.succeed("true")
    nginx_running.wait(timeout=30)

    log.info("a line from the script")
    with log.nested("a nested section"):
        client.succeed("true")
    with subtest("an inner subtest"):
        client.succeed("true")

with subtest("QEMU monitor and keys"):
    t.assertIn("VM status: running", client.send_monitor_command("info status"))
    client.send_key("shift")
    t.assertEqual(client.execute("true", check_output=False), (-2, ""))
    t.assertEqual(client.succeed("echo in sync"), "in sync\n")

with subtest("systemctl for a user"):
    web_server.succeed("useradd -m bob && loginctl enable-linger bob")
    web_server.wait_for_unit("default.target", user="bob", timeout=120)
    status, out = web_server.systemctl("is-active default.target", user="bob")
    t.assertEqual((status, out), (0, "active\n"))

with subtest("unsupported methods say so"):
    try:
        web_server.switch_root()
        raise Exception("switch_root did not raise")
    except NotImplementedError as e:
        t.assertIn("not supported yet by Vouch: switch_root", str(e))
    # A VM without a display: the error says what to change.
    with t.assertRaises(NotImplementedError) as cm:
        web_server.screenshot("screen")
    t.assertIn('has no display: give it "graphics": true', str(cm.exception))
    with t.assertRaises(NotImplementedError) as cm:
        web_server.get_tty_text(9)
    t.assertIn("no virtual console 9", str(cm.exception))
    # No X in this guest.
    with t.assertRaises(NotImplementedError) as cm:
        web_server.get_window_names()
    t.assertIn("x11-utils", str(cm.exception))
    with t.assertRaises(RequestedAssertionFailed) as cm:
        web_server.wait_for_x(timeout=2)
    t.assertIn("/tmp/.X11-unix/X0 does not exist", str(cm.exception))
    with t.assertRaises(AttributeError):
        web_server.no_such_method()  # type: ignore[attr-defined]

with subtest("snapshots (Vouch's, as in attest)"):
    client.succeed("echo before > /root/snap-mark")
    client.snapshot_create("base")
    client.succeed("echo after > /root/after-mark")
    client.snapshot_restore("base")
    t.assertEqual(client.succeed("cat /root/snap-mark"), "before\n")
    client.fail("test -e /root/after-mark")
    snapshot_all("both")
    client.succeed("touch /root/gone-after-restore-all")
    restore_all("both")
    client.fail("test -e /root/gone-after-restore-all")
    client.succeed("ping -c 1 -W 5 web-server")

with subtest("reboot, crash and shutdown"):
    client.succeed("echo before > /root/mark")
    client.reboot()
    t.assertEqual(client.succeed("echo back"), "back\n")
    client.crash()
    assert not client.is_up()
    client.start()
    t.assertEqual(client.succeed("echo again"), "again\n")
    client.shutdown()
    assert not client.booted
    web_server.execute("poweroff", check_return=False)
    web_server.wait_for_shutdown()
    join_all()
