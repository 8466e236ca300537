"""Run the guest under QEMU (TCG: this host has no KVM) and talk QMP to it.

The child gets PR_SET_PDEATHSIG=SIGKILL so it dies with the emulator even on
SIGKILL. That signal fires when the *thread* that forked exits, so every
QEMU is spawned from one long-lived launcher thread, never from a request
thread that ends with its connection."""
import ctypes
import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time

from .log import log

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Launcher:
    """A thread that lives as long as the process and runs Popen for us."""

    def __init__(self):
        self.q = queue.Queue()
        threading.Thread(target=self._run, daemon=True, name="qemu-launcher").start()

    def _run(self):
        while True:
            fn, box, done = self.q.get()
            try:
                box.append(fn())
            except BaseException as e:  # handed back to the caller
                box.append(e)
            done.set()

    def call(self, fn):
        box, done = [], threading.Event()
        self.q.put((fn, box, done))
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]


LAUNCHER = None


def spawn(argv):
    global LAUNCHER
    if LAUNCHER is None:
        LAUNCHER = Launcher()
    log("qemu:", " ".join(argv))
    # stdin/stdout are inherited: the serial console is the emulator's stdio,
    # as with Firecracker. QEMU's own messages go to stderr.
    return LAUNCHER.call(lambda: subprocess.Popen(argv, preexec_fn=_die_with_parent))


class QMPError(Exception):
    pass


class QMP:
    """Minimal QMP client: one reader thread, replies matched by id, events
    handed to on_event(name, data)."""

    def __init__(self, path, on_event=None, timeout=30, proc=None):
        self.on_event = on_event or (lambda n, d: None)
        self.lock = threading.Lock()
        self.waiters = {}
        self.next_id = 0
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline or (proc and proc.poll() is not None):
                    raise QMPError("QMP socket %s did not come up" % path)
                time.sleep(0.05)
        self.file = self.sock.makefile("rb")
        json.loads(self.file.readline())  # greeting
        threading.Thread(target=self._reader, daemon=True, name="qmp-reader").start()
        self.execute("qmp_capabilities")

    def _reader(self):
        for line in self.file:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "event" in msg:
                try:
                    self.on_event(msg["event"], msg.get("data", {}))
                except Exception as e:
                    log("qmp event handler error:", e)
            elif "id" in msg:
                box = self.waiters.pop(msg["id"], None)
                if box:
                    box[0].append(msg)
                    box[1].set()
        for box in list(self.waiters.values()):  # QEMU went away
            box[1].set()

    def execute(self, cmd, args=None, timeout=60):
        with self.lock:
            self.next_id += 1
            mid = self.next_id
        box = ([], threading.Event())
        self.waiters[mid] = box
        msg = {"execute": cmd, "id": mid}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        if not box[1].wait(timeout) or not box[0]:
            raise QMPError("no QMP reply to %s" % cmd)
        reply = box[0][0]
        if "error" in reply:
            raise QMPError(reply["error"].get("desc", str(reply["error"])))
        return reply.get("return")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def wait_migration(qmp, timeout=300):
    """Poll query-migrate until the (outgoing or incoming) stream is done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = (qmp.execute("query-migrate") or {}).get("status")
        if st == "completed":
            return
        if st in ("failed", "cancelled"):
            raise QMPError("migration %s" % st)
        time.sleep(0.05)
    raise QMPError("migration timed out")


def terminate(proc, grace=3.0):
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
