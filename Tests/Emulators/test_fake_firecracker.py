"""Tests for fake-firecracker against the examples of firecracker.yaml and
docs/ (python3 -m unittest, stdlib only). Boot tests use Vouch's cached
images and are slow under TCG; they share booted guests where they can and
never run more than two QEMUs at once."""
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

HERE = os.path.dirname(os.path.abspath(__file__))
EMU = os.path.join(HERE, "fake-firecracker")
IMAGES = os.environ.get("VOUCH_IMAGES", os.path.join(HERE, "..", "..", ".cache", "images"))
if not os.path.isdir(os.path.join(IMAGES, "minimal")):
    IMAGES = "/work/main/.cache/images"
MINIMAL = os.path.join(IMAGES, "minimal")
SYSTEMD = os.path.join(IMAGES, "systemd")
BOOT_ARGS = "console=ttyS0 panic=-1 loglevel=4 reboot=k"
VSOCK_ARGS = BOOT_ARGS + " vouch.vsock=1234"  # the guest's vsockd serves port 1234
BANNER = b"Spawning backdoor root shell..."
DESER = "An error occurred when deserializing the json body of a request: "


class Conn:
    """A keep-alive HTTP/1.1 client on a unix socket."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(120)
        self.s.connect(path)
        self.buf = b""

    def send_raw(self, data):
        self.s.sendall(data)

    def request(self, method, path, body=None, raw=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        head = "%s %s HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n" % (method, path)
        if data:
            head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(data)
        self.s.sendall(head.encode() + b"\r\n" + data)
        return self.read_response()

    def read_response(self):
        while b"\r\n\r\n" not in self.buf:
            c = self.s.recv(65536)
            if not c:
                raise ConnectionError("closed")
            self.buf += c
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            c = self.s.recv(65536)
            if not c:
                raise ConnectionError("closed mid-body")
            self.buf += c
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, (json.loads(body) if body else None)

    def close(self):
        self.s.close()


class Emulator:
    def __init__(self, tmp, name="api", env=None, args=()):
        self.tmp = tmp
        self.sock = os.path.join(tmp, name + ".sock")
        self.out = open(os.path.join(tmp, name + ".out"), "w+b")
        self.err = open(os.path.join(tmp, name + ".err"), "w+b")
        e = dict(os.environ, TMPDIR=tmp)
        e.update(env or {})
        self.proc = subprocess.Popen([EMU, "--api-sock", self.sock] + list(args), stdin=subprocess.DEVNULL,
                                     stdout=self.out, stderr=self.err, env=e)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.sock):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("emulator did not start: %s" % self.stderr())
            time.sleep(0.02)

    def call(self, method, path, body=None, raw=None):
        c = Conn(self.sock)  # one request per connection
        try:
            return c.request(method, path, body, raw)
        finally:
            c.close()

    def console(self):
        with open(self.out.name, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stderr(self):
        with open(self.err.name, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_console(self, text, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.console():
                return True
            time.sleep(0.2)
        raise AssertionError("%r not on console after %ds:\n%s\n--- stderr:\n%s"
                             % (text, timeout, self.console()[-2000:], self.stderr()[-1500:]))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()
        self.err.close()


class VsockConn:
    """A host-side vsock client (Firecracker's CONNECT protocol on uds_path)."""

    def __init__(self, path, port=1234, timeout=30):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.s.sendall(b"CONNECT %d\n" % port)
        self.buf = b""

    def ok_line(self):
        """The muxer's 'OK <n>' line, or None if the connection was closed."""
        while b"\n" not in self.buf:
            c = self.s.recv(4096)
            if not c:
                return None
            self.buf += c
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def read_until(self, pattern, timeout=30):
        """Read until the regex (bytes) matches what came after OK; -> match."""
        import re
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.buf)
            if m:
                return m
            self.s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                c = self.s.recv(4096)
            except socket.timeout:
                raise AssertionError("%r not seen on vsock; got %r" % (pattern, self.buf))
            if not c:
                raise AssertionError("vsock closed before %r; got %r" % (pattern, self.buf))
            self.buf += c

    def send(self, data):
        self.s.sendall(data)

    def close(self):
        self.s.close()


def vsock_connect(path, timeout=120):
    """CONNECT until the guest's vsockd listens (it starts late in boot)."""
    deadline = time.monotonic() + timeout
    while True:
        v = VsockConn(path)
        line = v.ok_line()
        if line is not None:
            return v, line
        v.close()
        if time.monotonic() > deadline:
            raise AssertionError("guest never listened on vsock port 1234")
        time.sleep(0.5)


def minimal_boot(emu, vsock=None):
    assert emu.call("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 256})[0] == 204
    assert emu.call("PUT", "/boot-source", {"kernel_image_path": os.path.join(MINIMAL, "vmlinux"),
                                            "initrd_path": os.path.join(MINIMAL, "initrd.img"),
                                            "boot_args": VSOCK_ARGS if vsock else BOOT_ARGS})[0] == 204
    if vsock:
        assert emu.call("PUT", "/vsock", {"guest_cid": 3, "uds_path": vsock})[0] == 204
    st, _, body = emu.call("PUT", "/actions", {"action_type": "InstanceStart"})
    assert st == 204, body


class ApiBase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="fakefc-test-")
        self.emu = Emulator(self.tmp)

    def tearDown(self):
        self.emu.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def fault(self, method, path, body=None, raw=None, contains=None):
        st, h, b = self.emu.call(method, path, body, raw)
        self.assertEqual(st, 400, b)
        self.assertEqual(h.get("content-type"), "application/json")
        self.assertIn("fault_message", b)
        if contains:
            self.assertIn(contains, b["fault_message"])
        return b["fault_message"]


class PreBootApi(ApiBase):
    def test_instance_info_and_version(self):
        st, h, b = self.emu.call("GET", "/")
        self.assertEqual(st, 200)
        self.assertEqual(h["server"], "Firecracker API")
        self.assertEqual(b["state"], "Not started")
        self.assertEqual(b["app_name"], "Firecracker")
        self.assertEqual(b["id"], "anonymous-instance")
        st, _, v = self.emu.call("GET", "/version")
        self.assertEqual((st, v["firecracker_version"]), (200, b["vmm_version"]))

    def test_keep_alive_several_requests_one_connection(self):
        c = Conn(self.emu.sock)
        for _ in range(3):
            self.assertEqual(c.request("GET", "/")[0], 200)
        self.assertEqual(c.request("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256})[0], 204)
        # pipelined: two requests in one write
        c.send_raw(b"GET /version HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        self.assertEqual(c.read_response()[2].keys(), {"firecracker_version"})
        self.assertEqual(c.read_response()[0], 200)
        c.close()

    def test_machine_config(self):
        st, _, b = self.emu.call("GET", "/machine-config")
        self.assertEqual((st, b["vcpu_count"], b["mem_size_mib"], b["smt"]), (200, 1, 128, False))
        st, h, b = self.emu.call("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 1024,
                                                            "smt": False, "track_dirty_pages": True})
        self.assertEqual((st, b), (204, None))
        self.assertNotIn("content-length", h)
        self.assertEqual(self.emu.call("PATCH", "/machine-config", {"mem_size_mib": 512})[0], 204)
        b = self.emu.call("GET", "/machine-config")[2]
        self.assertEqual((b["vcpu_count"], b["mem_size_mib"], b["track_dirty_pages"]), (2, 512, True))
        m = self.fault("PUT", "/machine-config", {"mem_size_mib": 1024})
        self.assertEqual(m, DESER + "missing field `vcpu_count` at line 1 column 22.")
        m = self.fault("PUT", "/machine-config", {"vcpu_count": "2", "mem_size_mib": 1024})
        self.assertEqual(m, DESER + 'invalid type: string "2", expected u8 at line 1 column 18.')
        m = self.fault("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64, "foo": 1})
        self.assertIn("unknown field `foo`, expected one of `vcpu_count`, `mem_size_mib`", m)
        self.fault("PUT", "/machine-config", {"vcpu_count": 0, "mem_size_mib": 64},
                   contains="Machine config error: The number of vCPUs must be greater than 0")
        self.fault("PUT", "/machine-config", {"vcpu_count": 3, "mem_size_mib": 64, "smt": True},
                   contains="even number if SMT is enabled")
        self.fault("PATCH", "/machine-config", {}, contains="Empty PATCH request.")
        self.fault("PUT", "/machine-config", contains="Empty PUT request.")

    def test_boot_source(self):
        k = os.path.join(MINIMAL, "vmlinux")
        self.assertEqual(self.emu.call("PUT", "/boot-source", {"kernel_image_path": k,
                                                              "boot_args": "console=ttyS0"})[0], 204)
        self.fault("PUT", "/boot-source", {"boot_args": "x"}, contains="missing field `kernel_image_path`")
        self.fault("PUT", "/boot-source", {"kernel_image_path": 5}, contains="expected a string")
        self.fault("PUT", "/boot-source", {"kernel_image_path": k, "kernel": k}, contains="unknown field `kernel`")
        self.fault("PUT", "/boot-source", {"kernel_image_path": "/nonexistent/vmlinux"},
                   contains="Boot source error: The kernel file cannot be opened: No such file or directory")

    def test_drives(self):
        disk = os.path.join(self.tmp, "disk.img")
        with open(disk, "wb") as f:
            f.truncate(1 << 20)
        ok = {"drive_id": "rootfs", "path_on_host": disk, "is_root_device": True, "is_read_only": False,
              "cache_type": "Unsafe", "io_engine": "Sync",
              "rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}
        self.assertEqual(self.emu.call("PUT", "/drives/rootfs", ok)[0], 204)
        self.assertEqual(self.emu.call("PUT", "/drives/rootfs", ok)[0], 204)  # update in place
        self.fault("PUT", "/drives/other", ok, contains="The id from the path does not match the id from the body!")
        self.fault("PUT", "/drives/data", dict(ok, drive_id="data"), contains="A root block device already exists!")
        self.fault("PUT", "/drives/x", {"drive_id": "x", "path_on_host": disk}, contains="missing field `is_root_device`")
        self.fault("PUT", "/drives/x", {"drive_id": "x", "path_on_host": disk, "is_root_device": "yes"},
                   contains="expected a boolean")
        self.fault("PUT", "/drives/x", dict(ok, drive_id="x", is_root_device=False, colour="red"),
                   contains="unknown field `colour`")
        self.fault("PUT", "/drives/x", dict(ok, drive_id="x", is_root_device=False, cache_type="Fast"),
                   contains="unknown variant `Fast`, expected `Unsafe` or `Writeback`")
        self.fault("PUT", "/drives/a-b", dict(ok, drive_id="a-b"),
                   contains="API Resource IDs can only contain alphanumeric characters and underscores.")
        self.fault("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": disk},
                   contains="not supported before starting the microVM")

    def test_network_vsock_entropy_logger_metrics(self):
        self.fault("PUT", "/network-interfaces/eth0", {"iface_id": "eth0"}, contains="missing field `host_dev_name`")
        m = self.fault("PUT", "/network-interfaces/eth0", {"iface_id": "eth1", "host_dev_name": "lo"})
        self.assertEqual(m, "The id from the path [eth0] does not match the id from the body [eth1]!")
        self.assertEqual(self.emu.call("PUT", "/network-interfaces/eth0",
                                       {"iface_id": "eth0", "host_dev_name": "lo",
                                        "guest_mac": "06:00:AC:10:00:02"})[0], 204)
        self.fault("PUT", "/network-interfaces/eth9", {"iface_id": "eth9", "host_dev_name": "nosuchtap0"},
                   contains="Cannot open/create the tap device")
        v = os.path.join(self.tmp, "v.sock")
        self.fault("PUT", "/vsock", {"uds_path": v}, contains="missing field `guest_cid`")
        self.fault("PUT", "/vsock", {"guest_cid": -3, "uds_path": v}, contains="invalid value: integer `-3`, expected u32")
        st, h, _ = self.emu.call("PUT", "/vsock", {"vsock_id": "vsock0", "guest_cid": 3, "uds_path": v})
        self.assertEqual((st, h.get("deprecation")), (204, "true"))
        self.assertEqual(self.emu.call("PUT", "/entropy", {})[0], 204)
        self.fault("PUT", "/entropy", {"rate_limiter": {"bandwidth": {"size": "big", "refill_time": 1}}},
                   contains="expected u64")
        self.assertEqual(self.emu.call("PUT", "/logger", {"level": "Info"})[0], 204)
        self.fault("PUT", "/logger", {"lvl": "Info"}, contains="unknown field `lvl`")
        mp = os.path.join(self.tmp, "metrics.json")
        self.assertEqual(self.emu.call("PUT", "/metrics", {"metrics_path": mp})[0], 204)
        self.fault("PUT", "/metrics", {}, contains="missing field `metrics_path`")

    def test_routing_and_actions_preboot(self):
        self.assertEqual(self.fault("GET", "/nonsense"), "Invalid request method and/or path: GET nonsense.")
        self.assertEqual(self.fault("DELETE", "/machine-config"),
                         "Invalid request method and/or path: DELETE machine-config.")
        self.fault("POST", "/actions", {"action_type": "InstanceStart"}, contains="Invalid request method and/or path")
        self.fault("GET", "/", raw=b"{}", contains="GET request cannot have a body.")
        self.fault("PUT", "/actions", {"action_type": "Reboot"}, contains="unknown variant `Reboot`")
        self.fault("PUT", "/actions", {"action_type": "InstanceStart", "x": 1}, contains="unknown field `x`, expected `action_type`")
        self.fault("PUT", "/actions", raw=b"{not json", contains=DESER)
        self.assertEqual(self.fault("PUT", "/actions", {"action_type": "InstanceStart"}),
                         "Start microvm error: Cannot start microvm without kernel configuration.")
        self.assertEqual(self.fault("PUT", "/actions", {"action_type": "SendCtrlAltDel"}),
                         "The requested operation is not supported before starting the microVM.")
        self.fault("PATCH", "/vm", {"state": "Paused"}, contains="not supported before starting the microVM")
        self.fault("PATCH", "/vm", {"state": "Frozen"}, contains="unknown variant `Frozen`, expected `Paused` or `Resumed`")
        self.fault("PUT", "/snapshot/create", {"snapshot_path": "a", "mem_file_path": "b"},
                   contains="not supported before starting the microVM")
        self.fault("PUT", "/snapshot/create", {"snapshot_path": "a"}, contains="missing field `mem_file_path`")
        self.fault("PUT", "/snapshot", {"snapshot_path": "a"}, contains="Missing snapshot operation type.")

    def test_snapshot_load_validation_and_after_configuration(self):
        self.fault("PUT", "/snapshot/load", {"snapshot_path": "s"},
                   contains="missing field: either `mem_backend` or `mem_file_path` is required")
        self.fault("PUT", "/snapshot/load", {"snapshot_path": "s", "mem_file_path": "m",
                                             "mem_backend": {"backend_type": "File", "backend_path": "m"}},
                   contains="too many fields")
        self.fault("PUT", "/snapshot/load", {"snapshot_path": "s",
                                             "mem_backend": {"backend_type": "Disk", "backend_path": "m"}},
                   contains="unknown variant `Disk`, expected `File` or `Uffd`")
        self.assertEqual(self.emu.call("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})[0], 204)
        self.assertEqual(self.fault("PUT", "/snapshot/load", {"snapshot_path": "s", "mem_backend":
                                                              {"backend_type": "File", "backend_path": "m"}}),
                         "Load snapshot error: Loading a microVM snapshot not allowed after configuring "
                         "boot-specific resources.")


class CommandLine(unittest.TestCase):
    def test_version_unknown_flag_and_socket_in_use(self):
        out = subprocess.run([EMU, "--version"], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0)
        self.assertRegex(out.stdout, r"^Firecracker v1\.\d+\.\d+")
        self.assertIn("emulator", out.stdout)
        bad = subprocess.run([EMU, "--frobnicate"], capture_output=True, text=True)
        self.assertEqual(bad.returncode, 153)  # FcExitCode::ArgParsing
        self.assertIn("Found argument '--frobnicate'", bad.stderr)
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "api.sock")
            open(p, "w").close()
            used = subprocess.run([EMU, "--api-sock", p], capture_output=True, text=True, timeout=10)
            self.assertEqual(used.returncode, 1)
            self.assertIn("Failed to open the API socket at: %s" % p, used.stderr)
            self.assertTrue(os.path.exists(p))  # not removed


class Faults(unittest.TestCase):
    def test_injected_faults(self):
        tmp = tempfile.mkdtemp(prefix="fakefc-test-")
        emu = Emulator(tmp, env={"FAKE_FIRECRACKER_FAULTS":
                                 "PUT /drives/rootfs=400,GET /version=close,GET /machine-config=hang,"
                                 "PUT /logger=close-mid"})
        try:
            st, _, b = emu.call("PUT", "/drives/rootfs", {"drive_id": "rootfs", "is_root_device": True})
            self.assertEqual(st, 400)
            self.assertIn("injected", b["fault_message"])
            self.assertRaises(ConnectionError, emu.call, "GET", "/version")
            c = Conn(emu.sock)
            c.s.settimeout(1)
            self.assertRaises(socket.timeout, c.request, "GET", "/machine-config")
            c.close()
            self.assertRaises(ConnectionError, emu.call, "PUT", "/logger", {"level": "Info"})
            self.assertEqual(emu.call("GET", "/")[0], 200)  # others unaffected
        finally:
            emu.stop()
            shutil.rmtree(tmp, ignore_errors=True)


@unittest.skipUnless(os.path.exists(os.path.join(MINIMAL, "vmlinux")), "no minimal image")
class MinimalGuest(unittest.TestCase):
    """One booted minimal guest for the post-boot checks, then a snapshot
    restored into a second emulator, then Ctrl-Alt-Del ends that one."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fakefc-test-")
        cls.vsock = os.path.join(cls.tmp, "v.sock")
        cls.emu = Emulator(cls.tmp)
        t0 = time.monotonic()
        try:
            minimal_boot(cls.emu, cls.vsock)
            cls.emu.wait_console("[    ", timeout=120)  # kernel messages (loglevel=4 keeps them few)
            # the initrd's init ran as far as vsockd opening its port
            deadline = time.monotonic() + 120
            while "vsock: guest opened port 1234" not in cls.emu.stderr():
                if time.monotonic() > deadline:
                    raise AssertionError("vsockd never opened its port:\n" + cls.emu.console()[-2000:])
                time.sleep(0.2)
        except BaseException:
            cls.tearDownClass()  # unittest skips it when setUpClass fails
            raise
        cls.boot_s = time.monotonic() - t0

    @classmethod
    def tearDownClass(cls):
        cls.emu.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_1_running_and_post_boot_rules(self):
        e = self.emu
        self.assertEqual(e.call("GET", "/")[2]["state"], "Running")
        msg = "The requested operation is not supported after starting the microVM."
        for path, body in (("/machine-config", {"vcpu_count": 1, "mem_size_mib": 128}),
                           ("/boot-source", {"kernel_image_path": "/x"}),
                           ("/vsock", {"guest_cid": 3, "uds_path": "/tmp/x"}),
                           ("/actions", {"action_type": "InstanceStart"})):
            st, _, b = e.call("PUT", path, body)
            self.assertEqual((st, b["fault_message"]), (400, msg), path)
        st, _, b = e.call("PUT", "/snapshot/create", {"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"})
        self.assertEqual(b["fault_message"], "Create snapshot error: Cannot save the microVM state: "
                                             "Operation not allowed: save/restore unavailable while running")
        st, _, b = e.call("PUT", "/snapshot/load", {"snapshot_path": "s", "mem_file_path": "m"})
        self.assertEqual(b["fault_message"], msg)

    def test_2_vsock_unopened_port_is_closed(self):
        for line in (b"CONNECT 9999\n", b"HELLO\n"):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            s.connect(self.vsock)
            s.sendall(line)
            self.assertEqual(s.recv(100), b"", line)  # closed, no OK
            s.close()

    def test_2b_vsock_shell_kept_across_connections(self):
        v, ok = vsock_connect(self.vsock)
        self.assertRegex(ok, rb"^OK \d+$")
        self.assertGreaterEqual(int(ok.split()[1]), 1 << 30)
        v.read_until(re.escape(BANNER))
        v.send(b"echo h''i\n")
        v.read_until(rb"(^|\n)hi\r?\n")
        v.send(b"echo P:$$:\n")
        pid = v.read_until(rb"P:(\d+):").group(1)
        # A second client while this one is relaying: the port is busy.
        busy = VsockConn(self.vsock)
        self.assertIsNone(busy.ok_line())
        busy.close()
        v.close()
        # Reconnect: the same shell, so no banner and the same $$. The guest
        # closes and reopens its port after a disconnect; QEMU reports that
        # at most once a second, so retry until it listens again.
        time.sleep(0.5)
        v2, ok2 = vsock_connect(self.vsock, timeout=30)
        self.assertRegex(ok2, rb"^OK \d+$")
        self.assertNotEqual(ok2, ok)  # host-side port counts up
        v2.send(b"echo P:$$:\n")
        self.assertEqual(v2.read_until(rb"P:(\d+):").group(1), pid)
        self.assertNotIn(BANNER, v2.buf)
        v2.close()

    def test_3_pause_resume_snapshot_and_restore(self):
        e = self.emu
        self.assertEqual(e.call("PATCH", "/vm", {"state": "Paused"})[0], 204)
        self.assertEqual(e.call("GET", "/")[2]["state"], "Paused")
        self.assertEqual(e.call("PATCH", "/vm", {"state": "Resumed"})[0], 204)
        self.assertEqual(e.call("GET", "/")[2]["state"], "Running")
        time.sleep(2)  # let init get further so the restored guest has work to do
        self.assertEqual(e.call("PATCH", "/vm", {"state": "Paused"})[0], 204)
        snap, mem = os.path.join(self.tmp, "vm.snap"), os.path.join(self.tmp, "vm.mem")
        t0 = time.monotonic()
        st, _, b = e.call("PUT", "/snapshot/create", {"snapshot_path": snap, "mem_file_path": mem,
                                                      "snapshot_type": "Full"})
        self.assertEqual(st, 204, b)
        self.assertGreater(os.path.getsize(mem), 1 << 20)
        with open(snap) as f:
            self.assertEqual(json.load(f)["machine-config"]["mem_size_mib"], 256)
        self.assertEqual(e.call("GET", "/")[2]["state"], "Paused")  # stays paused, as Firecracker
        print("\n  minimal boot %.1fs, snapshot create %.1fs" % (self.boot_s, time.monotonic() - t0))
        e.stop()  # at most two QEMUs; free this one first

        fresh = Emulator(self.tmp, name="restored")
        try:
            os.unlink(self.vsock) if os.path.exists(self.vsock) else None
            st, _, b = fresh.call("PUT", "/snapshot/load", {"snapshot_path": snap, "mem_backend":
                                                            {"backend_type": "File", "backend_path": mem},
                                                            "resume_vm": True})
            self.assertEqual(st, 204, b)
            self.assertEqual(fresh.call("GET", "/")[2]["state"], "Running")
            # The restored guest is alive: Ctrl-Alt-Del -> busybox reboot -> emulator exits.
            self.assertEqual(fresh.call("PUT", "/actions", {"action_type": "SendCtrlAltDel"})[0], 204)
            fresh.wait_console("reboot: Restarting system", timeout=60)
            self.assertEqual(fresh.proc.wait(30), 0)
            self.assertFalse(os.path.exists(fresh.sock))
        finally:
            fresh.stop()


@unittest.skipUnless(os.path.exists(os.path.join(MINIMAL, "vmlinux")), "no minimal image")
class VsockSilentFault(unittest.TestCase):
    def test_ok_then_nothing(self):
        tmp = tempfile.mkdtemp(prefix="fakefc-test-")
        vs = os.path.join(tmp, "v.sock")
        emu = Emulator(tmp, env={"FAKE_FIRECRACKER_FAULTS": "vsock=silent"})
        try:
            minimal_boot(emu, vs)
            v, ok = vsock_connect(vs)
            self.assertRegex(ok, rb"^OK \d+$")
            v.send(b"echo hi\n")
            v.s.settimeout(5)
            self.assertRaises(socket.timeout, v.s.recv, 100)  # no banner, no answer
            v.close()
        finally:
            emu.stop()
            shutil.rmtree(tmp, ignore_errors=True)


@unittest.skipUnless(os.path.exists(os.path.join(MINIMAL, "vmlinux")), "no minimal image")
class NoOrphans(unittest.TestCase):
    def test_sigkill_leaves_no_qemu(self):
        tmp = tempfile.mkdtemp(prefix="fakefc-orphan-")
        emu = Emulator(tmp)
        try:
            minimal_boot(emu)
            emu.wait_console("[    ", timeout=120)
            pat = "qemu.*" + tmp  # QEMU's QMP dir is under TMPDIR=tmp
            self.assertEqual(subprocess.run(["pgrep", "-f", pat], capture_output=True).returncode, 0)
            emu.proc.send_signal(signal.SIGKILL)
            emu.proc.wait()
            deadline = time.monotonic() + 10
            while subprocess.run(["pgrep", "-f", "qemu.*" + tmp], capture_output=True).returncode == 0:
                self.assertLess(time.monotonic(), deadline, "QEMU outlived a SIGKILLed emulator")
                time.sleep(0.1)
        finally:
            emu.stop()
            shutil.rmtree(tmp, ignore_errors=True)


@unittest.skipUnless(os.path.exists(os.path.join(SYSTEMD, "rootfs.ext4")), "no systemd image")
class SystemdGuest(unittest.TestCase):
    def test_boot_from_root_drive(self):
        tmp = tempfile.mkdtemp(prefix="fakefc-test-")
        emu = None
        try:
            disk = os.path.join(tmp, "root.ext4")
            shutil.copyfile(os.path.join(SYSTEMD, "rootfs.ext4"), disk)  # never write the cache
            emu = Emulator(tmp)
            c = emu.call
            self.assertEqual(c("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 512})[0], 204)
            self.assertEqual(c("PUT", "/boot-source", {
                "kernel_image_path": os.path.join(SYSTEMD, "vmlinux"),
                "initrd_path": os.path.join(SYSTEMD, "initrd.img"),
                "boot_args": "console=ttyS0 panic=-1 loglevel=4 reboot=k"})[0], 204)
            self.assertEqual(c("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": disk,
                                                         "is_root_device": True, "is_read_only": False})[0], 204)
            t0 = time.monotonic()
            self.assertEqual(c("PUT", "/actions", {"action_type": "InstanceStart"})[0], 204)
            self.assertIn("root=/dev/vda rw", emu.stderr())  # Firecracker appends it for the root drive
            emu.wait_console("systemd", timeout=180)
            print("\n  systemd: systemd on console after %.1fs" % (time.monotonic() - t0))
        finally:
            if emu:
                emu.stop()
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
