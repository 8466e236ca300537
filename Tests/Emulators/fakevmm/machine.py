"""One guest under QEMU's microvm machine, configured like a Firecracker
microVM: serial ttyS0 on our stdio, virtio-mmio block/net/rng devices (QEMU's
auto-kernel-cmdline adds the virtio_mmio.device= parameters the way
Firecracker does), an i8042 for Ctrl-Alt-Del and reboot=k, and -no-reboot
because Firecracker exits when the guest reboots."""
import os
import shlex
import shutil
import tempfile
import threading

from . import qemu
from .log import log
from .vsock import Bridge

QEMU = os.environ.get("FAKE_VMM_QEMU", "qemu-system-x86_64")


def tsc_hint(cmdline):
    """Firecracker's guests read the TSC frequency from CPUID; a TCG guest
    calibrates it against the PIT instead, which on a loaded host can stall
    its boot for minutes. Passing the host's rate (TCG's TSC runs at it)
    stands in for the CPUID leaf."""
    if "tsc_early_khz=" in cmdline:
        return cmdline
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return cmdline + " tsc_early_khz=%d" % int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError):
        pass
    return cmdline


class Machine:
    def __init__(self, machine_cfg, drives, nets, vsock, entropy, vsock_ports, vsock_fault, on_exit):
        self.cfg, self.drives, self.nets = machine_cfg, drives, nets
        self.vsock, self.entropy, self.on_exit = vsock, entropy, on_exit
        self.dir = tempfile.mkdtemp(prefix="fake-vmm-")
        self.paused = False
        self.proc = self.qmp = None
        self.bridge = Bridge(vsock["uds_path"], vsock_ports, self.dir, vsock_fault) if vsock else None

    def argv(self, kernel=None, initrd=None, cmdline=None, incoming=False):
        a = [QEMU, "-M", "microvm,accel=tcg,x-option-roms=off,isa-serial=on,rtc=on,pic=on,pit=on",
             "-cpu", "max", "-smp", str(self.cfg["vcpu_count"]), "-m", str(self.cfg["mem_size_mib"]),
             "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
             "-device", "i8042",
             "-chardev", "stdio,id=ser0,signal=off", "-serial", "chardev:ser0",
             "-qmp", "unix:%s,server=on,wait=off" % os.path.join(self.dir, "qmp.sock"),
             "-name", "fake-vmm,debug-threads=off"]
        if kernel:
            a += ["-kernel", kernel, "-append", cmdline]
            if initrd:
                a += ["-initrd", initrd]
        for i, d in enumerate(self.drives):
            ro = "on" if d["is_read_only"] else "off"
            cache = "writeback" if d["cache_type"] == "Writeback" else "unsafe"
            a += ["-drive", "file=%s,format=raw,if=none,id=drive%d,readonly=%s,cache=%s"
                  % (d["path_on_host"], i, ro, cache),
                  "-device", "virtio-blk-device,drive=drive%d" % i]
        for i, n in enumerate(self.nets):
            a += ["-netdev", "tap,id=net%d,ifname=%s,script=no,downscript=no" % (i, n["host_dev_name"])]
            dev = "virtio-net-device,netdev=net%d" % i
            if n["guest_mac"]:
                dev += ",mac=" + n["guest_mac"]
            a += ["-device", dev]
        if self.entropy is not None:
            a += ["-object", "rng-random,id=rng0,filename=/dev/urandom",
                  "-device", "virtio-rng-device,rng=rng0"]
        if self.bridge:
            a += self.bridge.qemu_args()
        if not (self.drives or self.nets or self.bridge or self.entropy is not None):
            # Seen here: microvm + this kernel hangs silently with no virtio
            # device at all; an idle virtio-serial bus (no ports) avoids it.
            a += ["-device", "virtio-serial-device"]
        if incoming:
            a += ["-incoming", "defer", "-S"]
        return a

    def _launch(self, argv):
        self.proc = qemu.spawn(argv)
        on_event = self.bridge.on_qmp_event if self.bridge else None
        self.qmp = qemu.QMP(os.path.join(self.dir, "qmp.sock"), self._event(on_event), proc=self.proc)
        threading.Thread(target=self._watch, daemon=True, name="qemu-watch").start()
        if self.bridge:
            self.bridge.listen()

    def _event(self, inner):
        def on_event(name, data):
            if name in ("RESET", "SHUTDOWN") and self.bridge:
                self.bridge.guest_reset()
            if inner:
                inner(name, data)
        return on_event

    def boot(self, kernel, initrd, cmdline):
        self._launch(self.argv(kernel, initrd, tsc_hint(cmdline)))

    def restore(self, mem_file, resume):
        # The kernel is inside the migration stream; QEMU only needs the same
        # devices, then the stream.
        self._launch(self.argv(incoming=True))
        if self.bridge:
            self.bridge.before_restore(getattr(self, "restore_busy", None))
        self.qmp.execute("migrate-incoming", {"uri": "exec:cat %s" % shlex.quote(mem_file)})
        qemu.wait_migration(self.qmp)
        if self.bridge:
            self.bridge.after_restore()
        self.paused = True
        if resume:
            self.set_paused(False)

    def _watch(self):
        rc = self.proc.wait()
        log("qemu exited with status", rc)
        self.cleanup()
        self.on_exit(rc)

    def set_paused(self, paused):
        self.qmp.execute("stop" if paused else "cont")
        self.paused = paused

    def ctrl_alt_del(self):
        keys = [{"type": "qcode", "data": k} for k in ("ctrl", "alt", "delete")]
        self.qmp.execute("send-key", {"keys": keys})

    def save_memory(self, path):
        # QEMU 7.2 has no file: migration URI; exec: runs via /bin/sh.
        self.qmp.execute("migrate", {"uri": "exec:cat > %s" % shlex.quote(path)})
        qemu.wait_migration(self.qmp)

    def kill(self):
        qemu.terminate(self.proc)
        self.cleanup()

    def cleanup(self):
        if self.bridge:
            self.bridge.close()
        shutil.rmtree(self.dir, ignore_errors=True)
