#!/usr/bin/env python3
"""Boot a Vouch guest image under QEMU and check its backdoor.

    images/smoke.py IMAGE_DIR [--machine microvm|pc] [--runs N] [--checks]

The host side owns the virtconsole socket before QEMU starts (we listen,
QEMU connects), as the real driver must.  Prints boot-to-banner times and,
with --checks, runs the functional checks (commands, 9p share, hostname,
^C interruption, systemd state, reboot, poweroff).  Kills every QEMU it
starts.  Standard library only.
"""

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time

BANNER = b"Spawning backdoor root shell..."


def qemu_argv(img, meta, d, machine, hostname, share=True, extra_cmdline=""):
    kernel = os.path.join(img, meta["kernel"])
    initrd = os.path.join(img, meta["initrd"])
    cmdline = meta["cmdline"]
    if hostname:
        cmdline += f" {meta.get('hostnameParam', 'vouch.hostname')}={hostname}"
    if extra_cmdline:
        cmdline += " " + extra_cmdline
    # microvm has only virtio-mmio ("-device" suffix); pc uses virtio-pci.
    bus = "device" if machine == "microvm" else "pci"
    serial_dev = "virtio-serial-device" if machine == "microvm" else "virtio-serial-pci"
    argv = [
        "qemu-system-x86_64",
        "-M", "microvm" if machine == "microvm" else "pc",
        "-accel", "tcg",
        "-m", "512",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
        "-chardev", f"socket,id=shell,path={d}/shell",
        "-device", serial_dev,
        "-device", "virtconsole,chardev=shell",
        "-serial", f"file:{d}/serial.log",
        "-qmp", f"unix:{d}/qmp,server=on,wait=off",
    ]
    if meta.get("rootDisk"):
        overlay = os.path.join(d, "overlay.qcow2")
        if not os.path.exists(overlay):
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                 "-b", os.path.join(img, meta["rootDisk"]), overlay],
                check=True)
        argv += ["-drive", f"if=none,id=root,file={overlay},format=qcow2",
                 "-device", f"virtio-blk-{bus},drive=root"]
    if share:
        os.makedirs(f"{d}/xchg", exist_ok=True)
        argv += ["-fsdev", f"local,id=shared,path={d}/xchg,security_model=none",
                 "-device", f"virtio-9p-{bus},fsdev=shared,mount_tag=shared"]
    return argv


class VM:
    def __init__(self, img, machine, hostname="vm1", share=True, extra_cmdline=""):
        self.img = img = os.path.realpath(img)
        with open(os.path.join(img, "image.json")) as f:
            self.meta = json.load(f)
        self.d = tempfile.mkdtemp(prefix="vouch-smoke-")
        self.machine = machine
        self.argv = qemu_argv(img, self.meta, self.d, machine, hostname, share, extra_cmdline)
        self.proc = None
        self.conn = None
        self.buf = b""

    def start(self):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(f"{self.d}/shell")
        self.listener.listen(1)
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=open(f"{self.d}/qemu.out", "wb"),
                                     stderr=subprocess.STDOUT)
        self.listener.settimeout(10)
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(0.2)

    def read_until(self, token, timeout):
        deadline = time.monotonic() + timeout
        while token not in self.buf:
            if time.monotonic() > deadline:
                raise TimeoutError(f"waiting for {token!r}; got {self.buf[-300:]!r}")
            if self.proc.poll() is not None and token not in self.buf:
                raise RuntimeError(f"qemu exited ({self.proc.returncode}) waiting for {token!r}")
            try:
                chunk = self.conn.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise EOFError("virtconsole socket closed")
            self.buf += chunk
        i = self.buf.index(token) + len(token)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def wait_banner(self, timeout=120):
        self.read_until(BANNER, timeout)
        return time.monotonic() - self.t0

    def send(self, data):
        self.conn.sendall(data)

    def run(self, cmd, timeout=60):
        """Run cmd in the backdoor shell; returns its stdout (stderr goes to ttyS0)."""
        marker = f"__VOUCH_{time.monotonic_ns()}__"
        self.send(f"{cmd}\necho {marker} $?\n".encode())
        out = self.read_until(marker.encode(), timeout).decode(errors="replace")
        rest = self.read_until(b"\n", 5).decode().strip()
        return out[: -len(marker)], int(rest)

    def serial(self):
        with open(f"{self.d}/serial.log", "rb") as f:
            return f.read().decode(errors="replace")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.conn:
            self.conn.close()
        self.listener.close()

    def cleanup(self):
        self.kill()
        shutil.rmtree(self.d, ignore_errors=True)


def host_tsc_khz():
    # Under TCG the guest TSC ticks at the host's rate.
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    raise RuntimeError("no 'cpu MHz' in /proc/cpuinfo")


def check(label, ok, detail=""):
    print(f"  [{'ok' if ok else 'FAIL'}] {label}{': ' + detail if detail else ''}")
    return ok


def functional(img, machine, extra_cmdline=""):
    vm = VM(img, machine, hostname="vm1", extra_cmdline=extra_cmdline)
    good = True
    try:
        vm.start()
        with open(f"{vm.d}/xchg/hello.txt", "w") as f:
            f.write("from host\n")
        t = vm.wait_banner()
        print(f"  banner after {t:.2f}s")
        out, rc = vm.run("echo hi; uname -r; hostname; ls /tmp/shared")
        good &= check("echo/uname/hostname/ls", rc == 0 and "hi" in out and "vm1" in out
                      and "hello.txt" in out and vm.meta["kernelVersion"] in out, repr(out))
        out, rc = vm.run("tty; readlink /proc/$$/fd/0; "
                         "awk '{print \"pid=\"$1, \"sid=\"$6, \"tty_nr=\"$7}' /proc/$$/stat; "
                         "ps -o pid,sid,tty,comm 2>/dev/null | grep -E 'bash|PID' || true")
        good &= check("hvc0 is the controlling tty", "/dev/hvc0" in out.splitlines()[0], repr(out))
        out, rc = vm.run("echo guest > /tmp/shared/back.txt")
        good &= check("write to share", os.path.exists(f"{vm.d}/xchg/back.txt"))
        if vm.meta.get("readyUnit"):
            out, rc = vm.run("systemctl is-system-running --wait; systemctl is-active nginx; "
                             "systemctl --failed --no-legend; curl -sS -o /dev/null -w '%{http_code}\\n' http://localhost/")
            good &= check("systemd running, nginx active, curl 200",
                          out.split() [:2] == ["running", "active"] and "200" in out, repr(out))
            out, rc = vm.run("systemd-analyze 2>/dev/null | head -1; systemd-analyze blame 2>/dev/null | head -12")
            print("  " + out.replace("\n", "\n  "))
        # ^C: without a trap, then with `trap : INT`.
        for prep in ("", "trap : INT"):
            vm.run(f"stty isig intr ^C; {prep}")
            t0 = time.monotonic()
            vm.send(b"sleep 100; echo after-sleep $?\n")
            time.sleep(1.0)
            vm.send(b"\x03")
            try:
                out, rc = vm.run("echo alive", timeout=10)
                good &= check(f"^C with {prep or 'no trap'!r}: shell survived",
                              "alive" in out and time.monotonic() - t0 < 10, repr(out))
            except (TimeoutError, EOFError, RuntimeError) as e:
                check(f"^C with {prep or 'no trap'!r}: shell survived", False, str(e)[:200])
                # the backdoor is respawned: wait for the banner again
                try:
                    vm.read_until(BANNER, 30)
                    print("  (backdoor respawned, banner seen again)")
                    vm.buf = b""
                except Exception as e2:  # noqa: BLE001
                    print(f"  backdoor did not come back: {e2}")
                    raise
            vm.run("stty -isig")
        # The shell exits -> respawn.
        vm.send(b"exit\n")
        t0 = time.monotonic()
        vm.read_until(BANNER, 30)
        good &= check("backdoor respawned after exit", True, f"{time.monotonic() - t0:.2f}s")
        out, rc = vm.run("echo again")
        good &= check("respawned shell works", "again" in out)
        # reboot -> banner again on the same socket
        t0 = time.monotonic()
        vm.send(b"reboot\n")
        vm.read_until(BANNER, 120)
        good &= check("reboot", vm.proc.poll() is None, f"banner again after {time.monotonic() - t0:.2f}s")
        out, rc = vm.run("echo after-reboot; hostname")
        good &= check("shell after reboot", "after-reboot" in out, repr(out))
        t0 = time.monotonic()
        vm.send(b"poweroff\n")
        try:
            vm.proc.wait(timeout=60)
            good &= check("poweroff: qemu exited", True, f"rc={vm.proc.returncode} after {time.monotonic() - t0:.2f}s")
        except subprocess.TimeoutExpired:
            good &= check("poweroff: qemu exited", False, "still running after 60 s")
    except Exception as e:  # noqa: BLE001
        good = check("functional run", False, f"{type(e).__name__}: {e}")
        print("  serial tail:\n" + "\n".join(vm.serial().splitlines()[-25:]))
    finally:
        print("  qemu: " + shlex.join(vm.argv))
        vm.cleanup()
    return good


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("image")
    ap.add_argument("--machine", default="microvm", choices=["microvm", "pc"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--checks", action="store_true")
    ap.add_argument("--cmdline", default="", help="extra kernel parameters")
    ap.add_argument("--no-share", action="store_true")
    ap.add_argument("--no-tsc-khz", action="store_true",
                    help="do not pass tsc_early_khz=<host cpu kHz> (TCG guests can hang "
                         "in TSC calibration on a loaded host without it)")
    args = ap.parse_args()
    extra = args.cmdline
    if not args.no_tsc_khz:
        extra = (extra + f" tsc_early_khz={host_tsc_khz()}").strip()
    times = []
    for _ in range(args.runs):
        vm = VM(args.image, args.machine, share=not args.no_share, extra_cmdline=extra)
        try:
            vm.start()
            times.append(vm.wait_banner())
        except Exception as e:  # noqa: BLE001
            print(f"boot failed: {e}\n--- serial:\n{vm.serial()[-3000:]}\n--- qemu:\n" + open(f"{vm.d}/qemu.out").read()[-2000:])
            print("qemu: " + shlex.join(vm.argv))
            vm.cleanup()
            return 1
        vm.cleanup()
    if times:
        print(f"{os.path.basename(os.path.realpath(args.image))} {args.machine}: boot to banner "
              + " ".join(f"{t:.2f}s" for t in times))
    ok = True
    if args.checks:
        ok = functional(args.image, args.machine, extra)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
