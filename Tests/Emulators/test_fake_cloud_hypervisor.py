"""Tests for fake-cloud-hypervisor against cloud-hypervisor's API spec and
sources (python3 -m unittest, stdlib only). Boot tests use Vouch's cached
minimal image, share one booted guest where they can, and never run more
than two QEMUs at once."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import test_fake_firecracker as fc

HERE = os.path.dirname(os.path.abspath(__file__))
EMU = os.path.join(HERE, "fake-cloud-hypervisor")
MINIMAL = fc.MINIMAL
CMDLINE = "console=ttyS0 panic=-1 loglevel=4 vouch.vsock=1234 reboot=k"
API = "Error from API"


class Emulator(fc.Emulator):
    def __init__(self, tmp, name="api", env=None, args=()):
        self.tmp = tmp
        self.sock = os.path.join(tmp, name + ".sock")
        self.out = open(os.path.join(tmp, name + ".out"), "w+b")
        self.err = open(os.path.join(tmp, name + ".err"), "w+b")
        e = dict(os.environ, TMPDIR=tmp)
        e.update(env or {})
        self.proc = subprocess.Popen([EMU, "--api-socket", "path=" + self.sock] + list(args),
                                     stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err, env=e)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.sock):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("emulator did not start: %s" % self.stderr())
            time.sleep(0.02)

    def api(self, method, name, body=None, raw=None):
        return self.call(method, "/api/v1/" + name, body, raw)

    def wait_stderr(self, text, timeout=120):
        deadline = time.monotonic() + timeout
        while text not in self.stderr():
            if time.monotonic() > deadline:
                raise AssertionError("%r not logged:\n%s\n--- console:\n%s"
                                     % (text, self.stderr()[-1500:], self.console()[-1500:]))
            time.sleep(0.2)


def vm_config(vsock=None, **over):
    cfg = {"cpus": {"boot_vcpus": 1, "max_vcpus": 1}, "memory": {"size": 256 << 20},
           "payload": {"kernel": os.path.join(MINIMAL, "vmlinux"),
                       "initramfs": os.path.join(MINIMAL, "initrd.img"), "cmdline": CMDLINE},
           "serial": {"mode": "Tty"}, "console": {"mode": "Off"}}
    if vsock:
        cfg["vsock"] = {"cid": 3, "socket": vsock}
    cfg.update(over)
    return cfg


class Api(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="fakech-test-")
        self.emu = Emulator(self.tmp)

    def tearDown(self):
        self.emu.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def err(self, method, name, status, chain, body=None, raw=None):
        st, h, b = self.emu.api(method, name, body, raw)
        self.assertEqual((st, b), (status, chain), name)
        self.assertEqual(h.get("content-type"), "application/json")

    def test_ping_and_transport(self):
        st, h, b = self.emu.api("GET", "vmm.ping")
        self.assertEqual(st, 200)
        self.assertEqual(h["server"], "Cloud Hypervisor API")
        self.assertEqual(set(b), {"build_version", "version", "pid", "features"})
        self.assertEqual(b["pid"], self.emu.proc.pid)
        self.assertRegex(b["build_version"], r"^v\d+\.\d+")
        c = fc.Conn(self.emu.sock)  # keep-alive
        for _ in range(3):
            self.assertEqual(c.request("GET", "/api/v1/vmm.ping")[0], 200)
        c.close()

    def test_routing_and_methods(self):
        self.err("GET", "nonsense", 404, ["Not Found"])
        st, _, _ = self.emu.call("GET", "/vmm.ping")  # outside /api/v1
        self.assertEqual(st, 404)
        self.err("PUT", "vmm.ping", 400, ["Bad Request"])
        self.err("PUT", "vm.info", 400, ["Bad Request"])
        self.err("GET", "vm.create", 400, ["Bad Request"])
        self.err("GET", "vm.boot", 400, ["Bad Request"])
        self.err("GET", "vmm.shutdown", 400, ["Bad Request"])
        st, _, b = self.emu.api("POST", "vm.boot")  # neither PUT nor GET: empty 400
        self.assertEqual((st, b), (400, None))
        st, _, b = self.emu.api("PUT", "vm.create")  # no body
        self.assertEqual((st, b), (400, None))
        self.err("PUT", "vm.pause", 400, ["Bad Request"], body={})  # body where none is taken
        self.err("PUT", "vm.snapshot", 400, ["Bad Request"])       # none where one is needed

    def test_state_machine_before_boot(self):
        self.err("PUT", "vm.boot", 404, [API, "The VM could not boot", "VM config is missing"])
        self.err("GET", "vm.info", 404, [API, "The VM info is not available", "VM is not created"])
        self.err("PUT", "vm.pause", 500, [API, "The VM could not be paused", "VM is not running"])
        self.err("PUT", "vm.resume", 500, [API, "The VM could not resume", "VM is not running"])
        self.err("PUT", "vm.shutdown", 500, [API, "The VM could not shutdown", "VM is not running"])
        self.err("PUT", "vm.reboot", 404, [API, "The VM could not reboot", "VM is not created"])
        self.err("PUT", "vm.power-button", 500, [API, "Error triggering power button", "VM is not running"])
        self.err("PUT", "vm.snapshot", 500, [API, "The VM could not be snapshotted", "VM is not running"],
                 body={"destination_url": "file:///tmp"})
        self.assertEqual(self.emu.api("PUT", "vm.delete")[0], 204)  # nothing to delete: fine
        self.assertEqual(self.emu.api("PUT", "vm.create", {"payload": {"kernel": "/nonexistent"}})[0], 204)
        self.err("PUT", "vm.create", 500, [API, "The VM could not be created", "VM is already created"],
                 body={"payload": {}})
        self.err("PUT", "vm.restore", 500, [API, "The VM could not be restored", "VM is already created"],
                 body={"source_url": "file:///tmp"})
        st, _, b = self.emu.api("PUT", "vm.boot")
        self.assertEqual(st, 500)
        self.assertEqual(b[:3], [API, "The VM could not boot", "Cannot open kernel file"])
        self.assertEqual(self.emu.api("PUT", "vm.delete")[0], 204)
        self.emu.api("PUT", "vm.create", {"cpus": {"boot_vcpus": 2, "max_vcpus": 1}, "payload": {}})
        self.err("PUT", "vm.boot", 500, [API, "The VM could not boot", "Failed to validate config",
                                         "Payload configuration is not bootable",
                                         "No bootitem provided: neither firmware nor kernel"])

    def test_vm_create_bodies_and_defaults(self):
        self.err("PUT", "vm.create", 400, ["Failed to deserialize JSON",
                                           "invalid type: string \"2\", expected u32 at line 1 column 27"],
                 raw=b'{"cpus": {"boot_vcpus": "2", "max_vcpus": 2}}')
        st, _, b = self.emu.api("PUT", "vm.create", {"cpus": {"boot_vcpus": 1}})
        self.assertEqual(st, 400)
        self.assertIn("missing field `max_vcpus`", b[1])
        st, _, b = self.emu.api("PUT", "vm.create", {"serial": {"mode": "Loud"}})
        self.assertIn("unknown variant `Loud`, expected one of `Off`, `Pty`, `Tty`, `File`, `Socket`, `Null`", b[1])
        st, _, b = self.emu.api("PUT", "vm.create", raw=b"{not json")
        self.assertEqual((st, b[0]), (400, "Failed to deserialize JSON"))
        # No deny_unknown_fields: unknown keys are ignored.
        cfg = {"payload": {"kernel": "/k", "cmdline": "x"}, "memory": {"size": 1 << 30}, "frobnicate": 1,
               "disks": [{"path": "/d.img", "readonly": True}], "net": [{"tap": "tap0", "mac": "12:34:56:78:90:ab"}]}
        self.assertEqual(self.emu.api("PUT", "vm.create", cfg)[0], 204)
        st, _, info = self.emu.api("GET", "vm.info")
        self.assertEqual((st, info["state"]), (200, "Created"))
        c = info["config"]
        self.assertNotIn("frobnicate", c)
        self.assertEqual((c["cpus"]["boot_vcpus"], c["cpus"]["max_vcpus"]), (1, 1))   # CpusConfig::default
        self.assertEqual(c["memory"]["size"], 1 << 30)
        self.assertEqual(c["rng"]["src"], "/dev/urandom")
        self.assertEqual(c["serial"]["mode"], "Null")   # SerialConfig::default
        self.assertEqual(c["console"]["mode"], "Tty")   # ConsoleConfig::default
        self.assertEqual((c["disks"][0]["num_queues"], c["disks"][0]["queue_size"]), (1, 128))
        self.assertEqual((c["net"][0]["num_queues"], c["net"][0]["queue_size"]), (2, 256))
        self.assertEqual(info["memory_actual_size"], 1 << 30)

    def test_restore_errors(self):
        d = os.path.join(self.tmp, "snap")
        os.mkdir(d)
        self.err("PUT", "vm.restore", 400, ["Failed to deserialize JSON",
                                            "missing field `source_url` at line 1 column 2"], body={})
        st, _, b = self.emu.api("PUT", "vm.restore", {"source_url": "file://" + d})
        self.assertEqual(st, 500)
        self.assertEqual(b[:5], [API, "The VM could not be restored", "Cannot restore VM",
                                 "Failed to receive migratable component snapshot",
                                 "Error opening VM config snapshot file \"%s/config.json\"" % d])
        st, _, b = self.emu.api("PUT", "vm.restore", {"source_url": "/no/scheme"})
        self.assertIn("Could not extract path from URL: /no/scheme", b)


class CommandLine(unittest.TestCase):
    def test_flags(self):
        out = subprocess.run([EMU, "--version"], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0)
        self.assertRegex(out.stdout, r"^cloud-hypervisor v\d+\.\d+")
        self.assertIn("emulator", out.stdout)
        bad = subprocess.run([EMU, "--frobnicate"], capture_output=True, text=True)
        self.assertEqual(bad.returncode, 2)  # clap
        self.assertIn("unexpected argument '--frobnicate'", bad.stderr)
        self.assertEqual(subprocess.run([EMU], capture_output=True).returncode, 2)  # help, as clap does
        self.assertEqual(subprocess.run([EMU, "--help"], capture_output=True).returncode, 0)
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "api.sock")
            first = subprocess.Popen([EMU, "--api-socket", p, "-v", "--log-file", os.path.join(d, "log")])
            try:
                deadline = time.monotonic() + 10
                while not os.path.exists(p):
                    self.assertLess(time.monotonic(), deadline)
                    time.sleep(0.05)
                second = subprocess.run([EMU, "--api-socket", "path=" + p], capture_output=True, text=True,
                                        timeout=10)
                self.assertEqual(second.returncode, 1)
                self.assertIn("in use", second.stderr)
                first.send_signal(signal.SIGTERM)
                self.assertEqual(first.wait(10), 128 + signal.SIGTERM)
                self.assertFalse(os.path.exists(p))
            finally:
                if first.poll() is None:
                    first.kill()


class Faults(unittest.TestCase):
    def test_injected(self):
        tmp = tempfile.mkdtemp(prefix="fakech-test-")
        emu = Emulator(tmp, env={"FAKE_CLOUD_HYPERVISOR_FAULTS": "PUT /api/v1/vm.create=400,GET /api/v1/vm.info=close"})
        try:
            st, _, b = emu.api("PUT", "vm.create", {"payload": {}})
            self.assertEqual(st, 400)
            self.assertIn("injected", json.dumps(b))
            self.assertRaises(ConnectionError, emu.api, "GET", "vm.info")
            self.assertEqual(emu.api("GET", "vmm.ping")[0], 200)
        finally:
            emu.stop()
            shutil.rmtree(tmp, ignore_errors=True)


@unittest.skipUnless(os.path.exists(os.path.join(MINIMAL, "vmlinux")), "no minimal image")
class MinimalGuest(unittest.TestCase):
    """One booted guest: vsock shell, pause/resume, snapshot; then a fresh
    emulator restores it, reboots it, and the guest's power-off ends it."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fakech-test-")
        cls.vsock = os.path.join(cls.tmp, "v.sock")
        cls.emu = Emulator(cls.tmp)
        t0 = time.monotonic()
        try:
            assert cls.emu.api("PUT", "vm.create", vm_config(cls.vsock))[0] == 204
            st, _, b = cls.emu.api("PUT", "vm.boot")
            assert st == 204, b
            cls.emu.wait_stderr("vsock: guest opened port 1234")
        except BaseException:
            cls.tearDownClass()
            raise
        cls.boot_s = time.monotonic() - t0

    @classmethod
    def tearDownClass(cls):
        cls.emu.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_1_running_vsock_shell(self):
        e = self.emu
        self.assertEqual(e.api("GET", "vm.info")[2]["state"], "Running")
        self.assertIn("[    ", e.console())  # serial Tty: the kernel's ttyS0 on our stdout
        self.assertEqual(e.api("PUT", "vm.boot")[2], [API, "The VM could not boot", "VM is already created"])
        self.assertEqual(e.api("PUT", "vm.resume")[2][-1], "Invalid transition: InvalidStateTransition(Running, Running)")
        st, _, b = e.api("PUT", "vm.snapshot", {"destination_url": "file://" + self.tmp})
        self.assertEqual((st, b[-1]), (500, "Trying to snapshot while VM is running"))
        v, ok = fc.vsock_connect(self.vsock)
        self.assertRegex(ok, rb"^OK \d+$")
        v.read_until(re.escape(fc.BANNER))
        v.send(b"echo h''i\n")
        v.read_until(rb"(^|\n)hi\r?\n")
        v.send(b"echo P:$$:\n")
        type(self).pid = v.read_until(rb"P:(\d+):").group(1)
        v.close()
        print("\n  minimal boot to vsockd %.1fs" % self.boot_s)

    def test_2_pause_snapshot_restore_reboot_poweroff(self):
        e = self.emu
        self.assertEqual(e.api("PUT", "vm.pause")[0], 204)
        self.assertEqual(e.api("GET", "vm.info")[2]["state"], "Paused")
        self.assertEqual(e.api("PUT", "vm.pause")[2][-1], "Invalid transition: InvalidStateTransition(Paused, Paused)")
        self.assertEqual(e.api("PUT", "vm.resume")[0], 204)
        self.assertEqual(e.api("GET", "vm.info")[2]["state"], "Running")
        self.assertEqual(e.api("PUT", "vm.pause")[0], 204)
        snap = os.path.join(self.tmp, "snap")
        os.mkdir(snap)
        t0 = time.monotonic()
        st, _, b = e.api("PUT", "vm.snapshot", {"destination_url": "file://" + snap})
        self.assertEqual(st, 204, b)
        self.assertEqual(sorted(os.listdir(snap)), ["config.json", "memory-ranges", "state.json"])
        with open(os.path.join(snap, "config.json")) as f:
            self.assertEqual(json.load(f)["memory"]["size"], 256 << 20)
        st, _, b = e.api("PUT", "vm.snapshot", {"destination_url": "file://" + snap})  # create_new
        self.assertEqual(b[-2:], ["Error creating VM config snapshot file", "File exists (os error 17)"])
        self.assertEqual(e.api("GET", "vm.info")[2]["state"], "Paused")
        snap_s = time.monotonic() - t0
        self.assertEqual(e.api("PUT", "vmm.shutdown")[0], 200)
        self.assertEqual(e.proc.wait(15), 0)  # at most two QEMUs: this one is gone

        fresh = Emulator(self.tmp, name="restored")
        try:
            t0 = time.monotonic()
            st, _, b = fresh.api("PUT", "vm.restore", {"source_url": "file://" + snap, "prefault": True})
            self.assertEqual(st, 204, b)
            self.assertEqual(fresh.api("GET", "vm.info")[2]["state"], "Paused")  # restored paused
            self.assertEqual(fresh.api("PUT", "vm.resume")[0], 204)
            print("\n  snapshot %.1fs, restore+resume %.1fs" % (snap_s, time.monotonic() - t0))
            try:
                v, ok = fc.vsock_connect(self.vsock, timeout=60)
            except AssertionError as x:
                raise AssertionError("%s\n--- stderr:\n%s" % (x, "\n".join(l for l in fresh.stderr().splitlines() if "no guest listener" not in l)[-3000:]))
            v.send(b"echo P:$$:\n")
            self.assertEqual(v.read_until(rb"P:(\d+):").group(1), self.pid)  # the same shell
            v.close()
            # The busybox guest runs no acpid: the ACPI power button is accepted
            # but nothing in the guest acts on it.
            self.assertEqual(fresh.api("PUT", "vm.power-button")[0], 204)
            time.sleep(3)
            self.assertEqual(fresh.api("GET", "vm.info")[2]["state"], "Running")
            # vm.reboot: the guest starts over in the same process (no exit).
            resets = fresh.stderr().count("vsock: guest closed port 1234")
            self.assertEqual(fresh.api("PUT", "vm.reboot")[0], 204)
            deadline = time.monotonic() + 30
            while fresh.stderr().count("vsock: guest closed port 1234") <= resets:  # the reset
                self.assertLess(time.monotonic(), deadline, "no reset seen")
                time.sleep(0.2)
            v, ok = fc.vsock_connect(self.vsock, timeout=120)
            v.read_until(re.escape(fc.BANNER))  # a new guest, a new shell
            # The guest powers off: cloud-hypervisor then shuts the VMM down.
            v.send(b"poweroff -f\n")
            self.assertEqual(fresh.proc.wait(60), 0)
            v.close()
            self.assertFalse(os.path.exists(fresh.sock))
        finally:
            fresh.stop()


@unittest.skipUnless(os.path.exists(os.path.join(MINIMAL, "vmlinux")), "no minimal image")
class Lifecycle(unittest.TestCase):
    def test_shutdown_keeps_config_then_sigkill_leaves_no_qemu(self):
        tmp = tempfile.mkdtemp(prefix="fakech-orphan-")
        emu = Emulator(tmp)
        try:
            self.assertEqual(emu.api("PUT", "vm.create", vm_config())[0], 204)
            self.assertEqual(emu.api("PUT", "vm.boot")[0], 204)
            emu.wait_console("[    ", timeout=120)
            self.assertEqual(emu.api("PUT", "vm.shutdown")[0], 204)
            # lib.rs vm_shutdown drops the VM but keeps its config: "Created", bootable again.
            self.assertEqual(emu.api("GET", "vm.info")[2]["state"], "Created")
            self.assertEqual(emu.api("PUT", "vm.boot")[0], 204)
            pat = "qemu.*" + tmp
            deadline = time.monotonic() + 10
            while subprocess.run(["pgrep", "-f", pat], capture_output=True).returncode != 0:
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.1)
            emu.proc.send_signal(signal.SIGKILL)
            emu.proc.wait()
            deadline = time.monotonic() + 10
            while subprocess.run(["pgrep", "-f", pat], capture_output=True).returncode == 0:
                self.assertLess(time.monotonic(), deadline, "QEMU outlived a SIGKILLed emulator")
                time.sleep(0.1)
        finally:
            emu.stop()
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
