"""The cloud-hypervisor API (vmm/src/api/http/*.rs routing, vmm/src/lib.rs
state machine), driving QEMU instead of KVM.

Error bodies are what error_response() writes: a JSON array of the Display
strings of the error and each of its sources, top first ("Error from API",
"The VM could not boot", "VM config is missing"). Status codes: 400 for
a wrong method, a body where none is taken or none where one is needed, and
JSON errors; 404 for an unknown path and for VmNotCreated/VmMissingConfig;
500 for every other API error."""
import copy
import json
import os
import shutil
import threading

from . import ch_schema as S
from . import qemu
from .http import Response
from .log import log
from .machine import QEMU, Machine, tsc_hint
from .schema import SchemaError, parse_body
from .vsock import Bridge

VERSION = "54.0.0"          # cloud-hypervisor/Cargo.toml this emulates
BUILD_VERSION = "v" + VERSION
STATE_FORMAT = "vouch-fake-cloud-hypervisor-state/1"
ROOT = "/api/v1/"

BAD_REQUEST = "Bad Request"
API = "Error from API"


class ApiFault(Exception):
    """An ApiError: status and the Display chain below "Error from API"."""

    def __init__(self, status, *chain):
        super().__init__(": ".join(chain))
        self.status, self.chain = status, list(chain)


def _err(status, chain):
    return Response(status, chain)


def _bare(status):
    return Response(status, None)


# VmError texts (vmm/src/vm.rs)
NOT_CREATED = "VM is not created"
MISSING_CONFIG = "VM config is missing"
ALREADY = "VM is already created"
NOT_RUNNING = "VM is not running"


def _vm_error(action, vm_err, *more):
    status = 404 if vm_err in (NOT_CREATED, MISSING_CONFIG) else 500
    return ApiFault(status, action, vm_err, *more)


def _os(e):
    return "%s (os error %d)" % (os.strerror(e.errno), e.errno) if getattr(e, "errno", None) else str(e)


class ChMachine(Machine):
    """A cloud-hypervisor guest under QEMU: virtio-PCI devices and ACPI on
    microvm (pcie=on, acpi=on), serial/virtio-console as the VmConfig says, a
    guest reset reboots in place (no -no-reboot), power-off ends QEMU."""

    def __init__(self, cfg, vsock_ports, vsock_fault, on_exit):
        self.ch = cfg
        self.on_exit = on_exit
        import tempfile
        self.dir = tempfile.mkdtemp(prefix="fake-vmm-")
        self.paused = False
        self.proc = self.qmp = None
        self.stopping = False
        v = cfg.get("vsock")
        self.bridge = Bridge(v["socket"], vsock_ports, self.dir, vsock_fault, bus="virtio-serial-pci") if v else None

    def _chardev(self, cid, c):
        mode = c["mode"]
        if mode == "Tty":
            return "stdio,id=%s,signal=off,mux=on" % cid if cid == "tty" else None
        if mode == "File":
            return "file,id=%s,path=%s" % (cid, c["file"])
        if mode == "Socket":
            return "socket,id=%s,path=%s,server=on,wait=off" % (cid, c["socket"])
        if mode == "Pty":
            return "pty,id=%s" % cid
        return "null,id=%s" % cid  # Null

    def argv(self, kernel=None, initrd=None, cmdline=None, incoming=False):
        c = self.ch
        mem_mib = max(1, c["memory"]["size"] >> 20)
        a = [QEMU, "-M", "microvm,accel=tcg,x-option-roms=off,pcie=on,acpi=on,isa-serial=on,rtc=on,pic=on,pit=on",
             "-cpu", "max", "-smp", "%d,maxcpus=%d" % (c["cpus"]["boot_vcpus"], c["cpus"]["max_vcpus"]),
             "-m", str(mem_mib), "-nodefaults", "-no-user-config", "-display", "none",
             "-qmp", "unix:%s,server=on,wait=off" % os.path.join(self.dir, "qmp.sock"),
             "-name", "fake-vmm,debug-threads=off"]
        if c["memory"]["shared"]:
            a += ["-object", "memory-backend-memfd,id=mem0,share=on,size=%dM" % mem_mib,
                  "-M", "memory-backend=mem0"]
        ser, con = c["serial"], c["console"]
        if "Tty" in (ser["mode"], con["mode"]):
            a += ["-chardev", "stdio,id=tty,signal=off,mux=on"]
        if ser["mode"] != "Off":
            if ser["mode"] == "Tty":
                a += ["-serial", "chardev:tty"]
            else:
                a += ["-chardev", self._chardev("ser0", ser), "-serial", "chardev:ser0"]
        if con["mode"] != "Off":
            a += ["-device", "virtio-serial-pci,id=vcon"]
            a += (["-device", "virtconsole,bus=vcon.0,chardev=tty"] if con["mode"] == "Tty" else
                  ["-chardev", self._chardev("con0", con), "-device", "virtconsole,bus=vcon.0,chardev=con0"])
        if incoming and kernel is None:
            # The migration stream holds the running kernel, but a later guest
            # reset boots again from -kernel, as cloud-hypervisor's reboot
            # reloads the payload.
            p = c["payload"]
            kernel, initrd, cmdline = p["kernel"], p["initramfs"], tsc_hint((p["cmdline"] or "").strip())
        if kernel:
            a += ["-kernel", kernel, "-append", cmdline or ""]
            if initrd:
                a += ["-initrd", initrd]
        for i, d in enumerate(c.get("disks") or []):
            ro = "on" if d["readonly"] else "off"
            cache = "none" if d["direct"] else "writeback"
            a += ["-drive", "file=%s,format=raw,if=none,id=disk%d,readonly=%s,cache=%s" % (d["path"], i, ro, cache),
                  "-device", "virtio-blk-pci,drive=disk%d" % i + (",serial=%s" % d["serial"] if d["serial"] else "")]
        for i, n in enumerate(c.get("net") or []):
            if n["tap"]:
                a += ["-netdev", "tap,id=net%d,ifname=%s,script=no,downscript=no" % (i, n["tap"])]
            else:
                a += ["-netdev", "user,id=net%d" % i]  # CH would create a TAP; we cannot
            dev = "virtio-net-pci,netdev=net%d" % i
            if n["mac"]:
                dev += ",mac=" + n["mac"]
            a += ["-device", dev]
        a += ["-object", "rng-random,id=rng0,filename=%s" % c["rng"]["src"], "-device", "virtio-rng-pci,rng=rng0"]
        if self.bridge:
            a += self.bridge.qemu_args()
        if incoming:
            a += ["-incoming", "defer", "-S"]
        return a

    def _watch(self):
        rc = self.proc.wait()
        log("qemu exited with status", rc)
        self.cleanup()
        if not self.stopping:
            self.on_exit(rc)  # the guest powered off

    def power_button(self):
        self.qmp.execute("system_powerdown")

    def reset(self):
        self.qmp.execute("system_reset")

    def stop(self):
        self.stopping = True
        self.kill()


class CloudHypervisor:
    def __init__(self, vsock_ports, vsock_fault, on_vmm_exit, no_shutdown=False):
        self.vsock_ports, self.vsock_fault = vsock_ports, vsock_fault
        self.on_vmm_exit = on_vmm_exit
        self.no_shutdown = no_shutdown
        self.config = None   # stored by vm.create (or a restore)
        self.vm = None       # ChMachine while a VM exists (VmOwnership::Owned)
        self.lock = threading.RLock()

    # --- routing (http/mod.rs, http_endpoint.rs) ---------------------------------
    def handle(self, method, path, body):
        with self.lock:
            return self._handle(method, path, body)

    def _handle(self, method, path, body):
        name = path[len(ROOT):] if path.startswith(ROOT) else None
        put_plain = {"vm.boot": self.vm_boot, "vm.delete": self.vm_delete, "vm.shutdown": self.vm_shutdown,
                     "vm.reboot": self.vm_reboot, "vm.pause": self.vm_pause, "vm.resume": self.vm_resume,
                     "vm.power-button": self.vm_power_button, "vm.nmi": self.not_emulated}
        put_body = {"vm.snapshot": (S.SNAPSHOT, self.vm_snapshot), "vm.restore": (S.RESTORE, self.vm_restore)}
        # Endpoints that exist in the real VMM but are not emulated.
        others = {"vm.add-device", "vm.add-user-device", "vm.add-disk", "vm.add-fs", "vm.add-generic-vhost-user",
                  "vm.add-net", "vm.add-pmem", "vm.add-vdpa", "vm.add-vsock", "vm.remove-device", "vm.resize",
                  "vm.resize-disk", "vm.resize-zone", "vm.send-migration", "vm.receive-migration"}
        try:
            if name == "vm.create":
                if method != "PUT":
                    return _err(400, [BAD_REQUEST])
                if body is None:
                    return _bare(400)
                return self.vm_create(parse_body(body, S.VM_CONFIG))
            if name in ("vm.info", "vmm.ping"):
                if method != "GET":
                    return _err(400, [BAD_REQUEST])
                return Response(200, self.vm_info() if name == "vm.info" else self.ping())
            if name == "vmm.shutdown":
                if method != "PUT":
                    return _err(400, [BAD_REQUEST])
                self.vmm_shutdown()
                return Response(200, None)
            if name in put_plain or name in put_body or name in others or name == "vm.counters":
                # VmActionHandler: PUT and GET reach the action; others get a bare 400.
                if method not in ("PUT", "GET"):
                    return _bare(400)
                if name == "vm.counters":
                    if method != "GET":
                        return _err(400, [BAD_REQUEST])
                    return Response(200, self.counters())
                if method == "GET":
                    return _err(400, [BAD_REQUEST])
                if name in put_plain:
                    if body is not None:
                        return _err(400, [BAD_REQUEST])
                    put_plain[name]()
                    return Response(204)
                if body is None:
                    return _err(400, [BAD_REQUEST])
                if name in others:
                    raise ApiFault(500, "%s is not emulated by fake-cloud-hypervisor" % name)
                schema, fn = put_body[name]
                fn(parse_body(body, schema))
                return Response(204)
            return _err(404, ["Not Found"])
        except SchemaError as e:
            return _err(400, ["Failed to deserialize JSON", str(e)])
        except ApiFault as e:
            log("API error:", e)
            return _err(e.status, [API] + e.chain)

    def not_emulated(self):
        raise ApiFault(500, "Error triggering NMI", "NMI is not emulated by fake-cloud-hypervisor")

    # --- VMM ------------------------------------------------------------------------
    def ping(self):
        return {"build_version": BUILD_VERSION, "version": VERSION, "pid": os.getpid(), "features": ["kvm"]}

    def vmm_shutdown(self):
        self._delete("The VMM could not shutdown")
        # The response goes out first; then the process exits.
        threading.Timer(0.2, self.on_vmm_exit, args=(0,)).start()

    def counters(self):
        if self.vm is None:
            raise _vm_error("The VM counters are not available", NOT_RUNNING)
        return {}

    # --- VM lifecycle (lib.rs RequestHandler) -----------------------------------
    def vm_create(self, cfg):
        if self.config is not None:
            raise _vm_error("The VM could not be created", ALREADY)
        self.config = copy.deepcopy(cfg)
        return Response(204)

    def state(self):
        if self.vm is None:
            return "Created"
        return "Paused" if self.vm.paused else "Running"

    def vm_info(self):
        if self.config is None:
            raise _vm_error("The VM info is not available", NOT_CREATED)
        mem = self.config["memory"]
        info = {"config": S.strip_none(self.config), "state": self.state(),
                "memory_actual_size": mem["size"] - (mem["hotplugged_size"] or 0)}
        if self.vm is not None:
            info["device_tree"] = {}
        return info

    def _validate(self, cfg, action):
        # VmConfig::validate (config.rs), the checks the emulator can make.
        fail = lambda *m: _vm_error(action, "Failed to validate config", *m)  # noqa: E731
        p = cfg.get("payload")
        if p is None or (p["kernel"] is None and p["firmware"] is None):
            raise fail("Payload configuration is not bootable", "No bootitem provided: neither firmware nor kernel")
        if p["firmware"] is not None and p["kernel"] is None:
            raise ApiFault(500, action, "firmware boot is not emulated by fake-cloud-hypervisor")
        for c in (cfg["console"], cfg["serial"]):
            if c["mode"] == "File" and c["file"] is None:
                raise fail("Path missing when using file console mode")
            if c["mode"] == "Socket" and c["socket"] is None:
                raise fail("Path missing when using socket console mode")
        cpus = cfg["cpus"]
        if cpus["max_vcpus"] < cpus["boot_vcpus"]:
            raise fail("Max CPUs (%d) lower than boot CPUs (%d)" % (cpus["max_vcpus"], cpus["boot_vcpus"]))
        for d in cfg.get("disks") or []:
            if d["path"] is not None and d["vhost_socket"] is not None:
                raise fail("Disk path and vhost socket both provided")

    def _open_files(self, cfg, action):
        p = cfg["payload"]
        for key, msg in (("kernel", "Cannot open kernel file"), ("initramfs", "Cannot open initramfs file")):
            if p[key] is not None:
                try:
                    open(p[key], "rb").close()
                except OSError as e:
                    raise ApiFault(500, action, msg, _os(e))
        for d in cfg.get("disks") or []:
            if d["path"] is not None:
                try:
                    open(d["path"], "rb").close()
                except OSError as e:
                    raise ApiFault(500, action, "Error from device manager", "Cannot open disk path", _os(e))

    def _new_machine(self, cfg):
        return ChMachine(cfg, self.vsock_ports, self.vsock_fault, self._guest_exit)

    def vm_boot(self):
        action = "The VM could not boot"
        if self.vm is not None:
            raise _vm_error(action, ALREADY)
        if self.config is None:
            raise _vm_error(action, MISSING_CONFIG)
        self._validate(self.config, action)
        self._open_files(self.config, action)
        self._start(self.config, action)

    def _start(self, cfg, action):
        p = cfg["payload"]
        vm = self._new_machine(cfg)
        try:
            vm.boot(p["kernel"], p["initramfs"], (p["cmdline"] or "").strip())
        except Exception as e:
            vm.stop()
            raise ApiFault(500, action, str(e))
        self.vm = vm

    def _guest_exit(self, rc):
        """QEMU ended on its own: the guest powered off (a reset reboots in
        place). The real VMM then shuts itself down (EpollDispatch::Exit ->
        vmm_shutdown), unless --no-shutdown (only the VM stops)."""
        with self.lock:
            self.vm = None
            if self.no_shutdown:
                log("guest powered off; VM shut down, VMM stays (--no-shutdown)")
                return
            self.config = None
        log("guest powered off; the VMM exits")
        self.on_vmm_exit(0)

    def _shutdown_vm(self):
        vm, self.vm = self.vm, None
        vm.stop()

    def vm_shutdown(self):
        if self.vm is None:
            raise _vm_error("The VM could not shutdown", NOT_RUNNING)
        self._shutdown_vm()

    def vm_reboot(self):
        if self.vm is None:
            raise _vm_error("The VM could not reboot", NOT_CREATED)
        self.vm.reset()
        if self.vm.paused:
            # lib.rs vm_reboot shuts the VM down and boots a new one: it runs.
            self.vm.set_paused(False)

    def vm_power_button(self):
        if self.vm is None:
            raise _vm_error("Error triggering power button", NOT_RUNNING)
        self.vm.power_button()

    def _delete(self, action):
        if self.config is None:
            return
        if self.vm is not None:
            self._shutdown_vm()
        self.config = None

    def vm_delete(self):
        self._delete("The VM could not be deleted")

    def vm_pause(self):
        action = "The VM could not be paused"
        if self.vm is None:
            raise _vm_error(action, NOT_RUNNING)
        if self.vm.paused:
            raise ApiFault(500, action, "Cannot pause VM", "Failed to pause migratable component",
                           "Invalid transition: InvalidStateTransition(Paused, Paused)")
        self.vm.set_paused(True)

    def vm_resume(self):
        action = "The VM could not resume"
        if self.vm is None:
            raise _vm_error(action, NOT_RUNNING)
        if not self.vm.paused:
            raise ApiFault(500, action, "Cannot resume VM", "Failed to resume migratable component",
                           "Invalid transition: InvalidStateTransition(Running, Running)")
        self.vm.set_paused(False)

    # --- snapshot / restore (vm.rs send, migration/mod.rs) --------------------------
    @staticmethod
    def _url_dir(url, fail):
        if not url.startswith("file://"):
            raise fail("Could not extract path from URL: %s" % url)
        d = url[len("file://"):]
        if not os.path.isdir(d):
            raise fail("Destination is not a directory: %s" % json.dumps(d))
        return d

    def vm_snapshot(self, p):
        action = "The VM could not be snapshotted"
        if self.vm is None:
            raise _vm_error(action, NOT_RUNNING)
        if not self.vm.paused:
            raise ApiFault(500, action, "Cannot snapshot VM", "Failed to snapshot migratable component",
                           "Trying to snapshot while VM is running")

        def fail(*m):
            return ApiFault(500, action, "Cannot send VM snapshot", "Failed to send migratable component snapshot", *m)

        d = self._url_dir(p["destination_url"], fail)
        files = []
        for name, what, data in (
                ("config.json", "VM config", json.dumps(S.strip_none(self.config))),
                ("state.json", "VM state", json.dumps({"format": STATE_FORMAT, "version": BUILD_VERSION,
                                                       "vsock_ports": self.vsock_ports,
                                                       "vsock_busy": self.vm.bridge.busy_ports() if self.vm.bridge else [],
                                                       "memory": "memory-ranges (a QEMU migration stream)"}))):
            path = os.path.join(d, name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)  # create_new(true)
            except OSError as e:
                raise fail("Error creating %s snapshot file" % what, _os(e))
            with os.fdopen(fd, "w") as f:
                f.write(data)
            files.append(path)
        try:
            self.vm.save_memory(os.path.join(d, "memory-ranges"))
        except Exception as e:
            raise ApiFault(500, action, "Cannot snapshot VM", "Failed to snapshot migratable component",
                           "memory: %s" % e)
        log("snapshot written to", d)

    def vm_restore(self, p):
        action = "The VM could not be restored"
        if self.vm is not None or self.config is not None:
            raise _vm_error(action, ALREADY)

        def fail(*m):
            return _vm_error(action, "Cannot restore VM", "Failed to receive migratable component snapshot", *m)

        d = self._url_dir(p["source_url"], fail)
        cfg_path = os.path.join(d, "config.json")
        try:
            with open(cfg_path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise fail("Error opening VM config snapshot file %s" % json.dumps(cfg_path), _os(e))
        try:
            cfg = parse_body(raw, S.VM_CONFIG)
        except SchemaError as e:
            raise fail("Error deserialising VM config snapshot", str(e))
        st_path = os.path.join(d, "state.json")
        try:
            with open(st_path) as f:
                st = json.load(f)
        except OSError as e:
            raise fail("Error opening VM state snapshot file %s" % json.dumps(st_path), _os(e))
        except ValueError as e:
            raise fail("Error deserialising VM state snapshot", str(e))
        if st.get("format") != STATE_FORMAT:
            raise fail("Error deserialising VM state snapshot", "not a snapshot written by this emulator")
        mem = os.path.join(d, "memory-ranges")
        if not os.path.exists(mem):
            raise ApiFault(500, action, "Cannot restore VM", "Memory manager error",
                           "memory-ranges: No such file or directory (os error 2)")
        vm = self._new_machine(cfg)
        vm.restore_busy = st.get("vsock_busy")
        try:
            vm.restore(mem, resume=False)
        except Exception as e:
            vm.stop()
            raise ApiFault(500, action, "Cannot restore VM", str(e))
        self.config, self.vm = cfg, vm
        if p["resume"]:
            self.vm_resume()

    def stop(self):
        with self.lock:
            if self.vm is not None:
                self._shutdown_vm()
