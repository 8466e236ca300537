"""The Firecracker API state machine (what src/vmm/src/rpc_interface.rs does),
driving QEMU instead of KVM.

Routing and parse errors follow src/firecracker/src/api_server/
parsed_request.rs; fault texts are the Display strings of the Rust error
enums, wrapped the way VmmActionError wraps them ("Drive config error: ...")."""
import json
import os
import socket

from . import fc_schema as S
from .http import Response, fault
from .log import log
from .machine import Machine
from .schema import SchemaError, parse_body

VERSION = "1.17.0-dev"  # the firecracker.yaml version this emulates
SNAPSHOT_FORMAT = "vouch-fake-firecracker-snapshot/1"
# boot_source.rs: used when boot_args is absent.
DEFAULT_CMDLINE = ("reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux "
                   "i8042.dumbkbd swiotlb=noforce")
MAX_VCPUS = 32

POST_BOOT = "The requested operation is not supported after starting the microVM."
PRE_BOOT = "The requested operation is not supported before starting the microVM."
DESER = "An error occurred when deserializing the json body of a request: %s."
ID_MISMATCH = "The id from the path does not match the id from the body!"


class Fault(Exception):
    pass


def _ok(data=None):
    return Response(204) if data is None else Response(200, data)


class Firecracker:
    def __init__(self, instance_id, vsock_ports, vsock_fault, on_exit):
        self.id, self.vsock_ports, self.vsock_fault = instance_id, vsock_ports, vsock_fault
        self.on_exit = on_exit
        self.machine_cfg = {"vcpu_count": 1, "mem_size_mib": 128, "smt": False,
                            "track_dirty_pages": False, "huge_pages": "None"}
        self.boot_source, self.drives, self.nets = None, [], []
        self.vsock = self.entropy = self.metrics = None
        self.boot_path = False  # rpc_interface: set by any boot-specific resource
        self.vm = None          # Machine once started or restored

    # --- routing (parsed_request.rs) ---------------------------------------
    def handle(self, method, path, body):
        tokens = [t for t in path.lstrip("/").split("/")]
        if tokens and tokens[-1] == "":
            tokens.pop()  # split_terminator drops one trailing empty token
        head = tokens[0] if tokens else ""
        sub = tokens[1] if len(tokens) > 1 else None
        try:
            return self._route(method, head, sub, body)
        except Fault as e:
            return fault(400, str(e))
        except SchemaError as e:
            return fault(400, DESER % e)

    def _route(self, method, head, sub, body):
        routes = {
            ("GET", ""): lambda: _ok(self.instance_info()),
            ("GET", "version"): lambda: _ok({"firecracker_version": VERSION}),
            ("GET", "machine-config"): lambda: _ok(self.machine_config_out()),
        }
        if method == "GET" and body is None:
            if (method, head) in routes:
                return routes[(method, head)]()
            if head == "vm" and sub == "config":
                return _ok(self.full_config())
        if method == "GET" and body is not None:
            raise Fault("GET request cannot have a body.")
        if method in ("PUT", "PATCH") and body is None:
            raise Fault("Empty %s request." % method)
        table = {
            ("PUT", "actions"): self.put_actions, ("PUT", "boot-source"): self.put_boot_source,
            ("PUT", "drives"): self.put_drive, ("PATCH", "drives"): self.patch_drive,
            ("PUT", "logger"): self.put_logger, ("PUT", "machine-config"): self.put_machine_config,
            ("PATCH", "machine-config"): self.patch_machine_config,
            ("PUT", "metrics"): self.put_metrics,
            ("PUT", "network-interfaces"): self.put_net, ("PATCH", "network-interfaces"): self.patch_net,
            ("PUT", "snapshot"): self.put_snapshot, ("PUT", "vsock"): self.put_vsock,
            ("PUT", "entropy"): self.put_entropy, ("PATCH", "vm"): self.patch_vm,
        }
        fn = table.get((method, head))
        if fn is None:
            return fault(400, "Invalid request method and/or path: %s %s." % (method, head))
        return fn(body, sub) if head in ("drives", "network-interfaces", "snapshot") else fn(body)

    # --- GET ------------------------------------------------------------------
    def state(self):
        if self.vm is None:
            return "Not started"
        return "Paused" if self.vm.paused else "Running"

    def instance_info(self):
        return {"id": self.id, "state": self.state(), "vmm_version": VERSION, "app_name": "Firecracker"}

    def machine_config_out(self):
        return {k: v for k, v in self.machine_cfg.items() if v is not None}

    def full_config(self):
        return {"balloon": None, "drives": self.drives, "boot-source": self.boot_source,
                "cpu-config": None, "logger": None, "machine-config": self.machine_config_out(),
                "metrics": self.metrics, "mmds-config": None, "network-interfaces": self.nets,
                "vsock": self.vsock, "entropy": self.entropy}

    # --- pre-boot resources -----------------------------------------------------
    def _preboot(self):
        if self.vm is not None:
            raise Fault(POST_BOOT)

    def _postboot(self):
        if self.vm is None:
            raise Fault(PRE_BOOT)

    @staticmethod
    def _checked_id(sub):
        if not sub:
            raise Fault("The ID cannot be empty.")
        if not all(c.isalnum() or c == "_" for c in sub):
            raise Fault("API Resource IDs can only contain alphanumeric characters and underscores.")
        return sub

    def put_machine_config(self, body):
        cfg = parse_body(body, S.MACHINE_CONFIG)
        self._preboot()
        return self._set_machine(cfg, self._dep(cfg, "PUT"))

    def patch_machine_config(self, body):
        upd = parse_body(body, S.MACHINE_CONFIG_UPDATE)
        if all(v is None for v in upd.values()):
            raise Fault("Empty PATCH request.")
        self._preboot()
        cfg = dict(self.machine_cfg)
        cfg.update({k: v for k, v in upd.items() if v is not None})
        return self._set_machine(cfg, self._dep(upd, "PATCH"))

    @staticmethod
    def _dep(cfg, method):
        if cfg.get("cpu_template") is not None:
            return [("Deprecation", "true")]
        return []

    def _set_machine(self, cfg, headers):
        n = cfg["vcpu_count"]
        if n == 0 or n > MAX_VCPUS or (cfg["smt"] and n > 1 and n % 2):
            raise Fault("Machine config error: The number of vCPUs must be greater than 0, less than "
                        "%d and must be 1 or an even number if SMT is enabled." % MAX_VCPUS)
        if cfg["mem_size_mib"] == 0 or (cfg["huge_pages"] == "2M" and cfg["mem_size_mib"] % 2):
            raise Fault("Machine config error: The memory size (MiB) is either 0, or not a multiple "
                        "of the configured page size.")
        self.machine_cfg = cfg
        self.boot_path = True
        return Response(204, headers=headers)

    def put_boot_source(self, body):
        cfg = parse_body(body, S.BOOT_SOURCE)
        self._preboot()
        for key, what in (("kernel_image_path", "The kernel file cannot be opened: %s"),
                          ("initrd_path", "The initrd file cannot be opened due to invalid path or "
                                          "invalid permissions. %s")):
            if cfg[key] is not None:
                try:
                    open(cfg[key], "rb").close()
                except OSError as e:
                    raise Fault("Boot source error: " + what % _os_error(e))
        self.boot_source = cfg
        self.boot_path = True
        return _ok()

    def put_drive(self, body, sub):
        drive_id = self._checked_id(sub)
        cfg = parse_body(body, S.DRIVE)
        if drive_id != cfg["drive_id"]:
            raise Fault(ID_MISMATCH)
        self._preboot()
        others = [d for d in self.drives if d["drive_id"] != drive_id]
        if cfg["is_root_device"] and any(d["is_root_device"] for d in others):
            raise Fault("Drive config error: A root block device already exists!")
        if cfg["socket"] is not None:
            raise Fault("Drive config error: Unable to create the virtio block device: vhost-user "
                        "block devices are not emulated")
        try:
            open(cfg["path_on_host"] or "", "rb").close()
        except OSError as e:
            raise Fault("Drive config error: Unable to create the virtio block device: Virtio backend "
                        "error: Error manipulating the backing file: %s %s" % (_os_error(e), cfg["path_on_host"]))
        old = [i for i, d in enumerate(self.drives) if d["drive_id"] == drive_id]
        if old:
            self.drives[old[0]] = cfg
        elif cfg["is_root_device"]:
            self.drives.insert(0, cfg)  # the root device always goes first
        else:
            self.drives.append(cfg)
        self.boot_path = True
        return _ok()

    def put_net(self, body, sub):
        iface_id = self._checked_id(sub)
        cfg = parse_body(body, S.NET)
        if iface_id != cfg["iface_id"]:
            raise Fault("The id from the path [%s] does not match the id from the body [%s]!"
                        % (iface_id, cfg["iface_id"]))
        self._preboot()
        mac = cfg["guest_mac"]
        if mac is not None and any(n["guest_mac"] == mac and n["iface_id"] != iface_id for n in self.nets):
            raise Fault("Network config error: The MAC address is already in use: %s" % mac)
        try:
            socket.if_nametoindex(cfg["host_dev_name"])
        except OSError as e:
            raise Fault("Network config error: Cannot open/create the tap device: Open tap device "
                        "failed: %s" % _os_error(e))
        self.nets = [n for n in self.nets if n["iface_id"] != iface_id] + [cfg]
        self.boot_path = True
        return _ok()

    def put_vsock(self, body):
        cfg = parse_body(body, S.VSOCK)
        self._preboot()
        if os.path.exists(cfg["uds_path"]):
            # The real backend binds uds_path and fails if it exists.
            raise Fault("Vsock config error: Cannot create backend for vsock device: Error binding "
                        "to the host-side Unix socket: Address in use (os error 98)")
        self.vsock = cfg
        self.boot_path = True
        headers = [("Deprecation", "true")] if cfg["vsock_id"] is not None else []
        return Response(204, headers=headers)

    def put_entropy(self, body):
        cfg = parse_body(body, S.ENTROPY)
        self._preboot()
        self.entropy = cfg
        self.boot_path = True
        return _ok()

    def put_logger(self, body):
        cfg = parse_body(body, S.LOGGER)
        self._preboot()
        if cfg["log_path"]:
            from . import log as L
            try:
                L.setup("[fake-firecracker]", cfg["log_path"])
            except OSError as e:
                raise Fault("Logger error: Failed to open target file: %s" % _os_error(e))
        return _ok()

    def put_metrics(self, body):
        cfg = parse_body(body, S.METRICS)
        self._preboot()
        try:
            open(cfg["metrics_path"], "a").close()
        except OSError as e:
            raise Fault("Metrics error: Cannot initialize the metrics system due to bad user input: %s"
                        % _os_error(e))
        self.metrics = cfg
        return _ok()

    # --- actions and runtime ------------------------------------------------------
    def put_actions(self, body):
        act = parse_body(body, S.ACTION)["action_type"]
        if act == "InstanceStart":
            self._preboot()
            self.start()
            return _ok()
        self._postboot()
        if act == "SendCtrlAltDel":
            self.vm.ctrl_alt_del()
        elif self.metrics:  # FlushMetrics
            with open(self.metrics["metrics_path"], "a") as f:
                f.write(json.dumps({"emulator": "fake-firecracker", "state": self.state()}) + "\n")
        return _ok()

    def start(self):
        if self.boot_source is None:
            raise Fault("Start microvm error: Cannot start microvm without kernel configuration.")
        args = self.boot_source["boot_args"]
        args = DEFAULT_CMDLINE if args is None else args
        root = next((d for d in self.drives if d["is_root_device"]), None)
        if root is not None:
            # builder.rs / boot_source.rs append_root_device_cmdline
            dev = "root=PARTUUID=%s" % root["partuuid"] if root["partuuid"] else "root=/dev/vda"
            args = "%s %s %s" % (args, dev, "ro" if root["is_read_only"] else "rw")
        self.vm = self._machine()
        try:
            self.vm.boot(self.boot_source["kernel_image_path"], self.boot_source["initrd_path"], args.strip())
        except Exception as e:
            self.vm = None
            raise Fault("Start microvm error: %s" % e)

    def _machine(self):
        return Machine(self.machine_cfg, self.drives, self.nets, self.vsock, self.entropy,
                       self.vsock_ports, self.vsock_fault, self.on_exit)

    def patch_vm(self, body):
        state = parse_body(body, S.VM)["state"]
        self._postboot()
        self.vm.set_paused(state == "Paused")
        return _ok()

    def patch_drive(self, body, sub):
        drive_id = self._checked_id(sub)
        upd = parse_body(body, S.DRIVE_UPDATE)
        if drive_id != upd["drive_id"]:
            raise Fault(ID_MISMATCH)
        self._postboot()
        drive = next((d for d in self.drives if d["drive_id"] == drive_id), None)
        if drive is None:
            raise Fault("Drive config error: Unable to patch the block device: Invalid block device ID! "
                        "Please verify the request arguments.")
        if upd["path_on_host"] not in (None, drive["path_on_host"]):
            # QEMU cannot swap the medium of a virtio-blk-device in place.
            raise Fault("Drive config error: Unable to patch the block device: the emulator cannot "
                        "replace a drive's backing file. Please verify the request arguments.")
        return _ok()

    def patch_net(self, body, sub):
        iface_id = self._checked_id(sub)
        upd = parse_body(body, S.NET_UPDATE)
        if iface_id != upd["iface_id"]:
            raise Fault("The id from the path [%s] does not match the id from the body [%s]!"
                        % (iface_id, upd["iface_id"]))
        self._postboot()
        if not any(n["iface_id"] == iface_id for n in self.nets):
            raise Fault("Network config error: Unable to update the net device: Invalid network "
                        "interface ID - not found.")
        return _ok()

    # --- snapshots -------------------------------------------------------------
    def put_snapshot(self, body, sub):
        if sub is None:
            raise Fault("Missing snapshot operation type.")
        if sub == "create":
            return self.snapshot_create(parse_body(body, S.SNAPSHOT_CREATE))
        if sub == "load":
            return self.snapshot_load(parse_body(body, S.SNAPSHOT_LOAD))
        return fault(400, "Invalid request method and/or path: PUT /snapshot/%s." % sub)

    def snapshot_create(self, p):
        self._postboot()
        if not self.vm.paused:
            raise Fault("Create snapshot error: Cannot save the microVM state: Operation not allowed: "
                        "save/restore unavailable while running")
        if p["snapshot_type"] == "Diff":
            log("snapshot: Diff requested; QEMU writes a full memory image (resumable on its own)")
        state = {"format": SNAPSHOT_FORMAT, "vmm_version": VERSION, "snapshot_type": p["snapshot_type"],
                 "machine-config": self.machine_cfg, "drives": self.drives,
                 "network-interfaces": self.nets, "vsock": self.vsock, "entropy": self.entropy,
                 "vsock_ports": self.vsock_ports}
        try:
            self.vm.save_memory(p["mem_file_path"])
            with open(p["snapshot_path"], "w") as f:
                json.dump(state, f, indent=1)
        except OSError as e:
            raise Fault("Create snapshot error: Cannot perform write on the snapshot backing file: %s"
                        % _os_error(e))
        except Exception as e:
            raise Fault("Create snapshot error: Cannot write memory file: %s" % e)
        return _ok()

    def snapshot_load(self, p):
        if (p["mem_backend"] is None) == (p["mem_file_path"] is None):
            which = ("missing field: either `mem_backend` or `mem_file_path` is required"
                     if p["mem_backend"] is None else
                     "too many fields: either `mem_backend` or `mem_file_path` exclusively is required")
            raise SchemaError(which)
        self._preboot()
        if self.boot_path:
            raise Fault("Load snapshot error: Loading a microVM snapshot not allowed after configuring "
                        "boot-specific resources.")
        backend = p["mem_backend"] or {"backend_type": "File", "backend_path": p["mem_file_path"]}
        if backend["backend_type"] == "Uffd":
            raise Fault("Load snapshot error: Failed to restore from snapshot: the emulator supports "
                        "only the File memory backend")
        err = "Load snapshot error: Failed to restore from snapshot: "
        try:
            with open(p["snapshot_path"]) as f:
                st = json.load(f)
            open(backend["backend_path"], "rb").close()
        except (OSError, ValueError) as e:
            raise Fault(err + "Cannot open the snapshot file: %s" % e)
        if st.get("format") != SNAPSHOT_FORMAT:
            raise Fault(err + "not a snapshot written by this emulator")
        nets = [dict(n) for n in st["network-interfaces"]]
        for o in p["network_overrides"]:
            match = [n for n in nets if n["iface_id"] == o["iface_id"]]
            if not match:
                raise Fault(err + "Invalid network override: no interface with iface_id %s" % o["iface_id"])
            match[0]["host_dev_name"] = o["host_dev_name"]
        vsock = st["vsock"]
        if p["vsock_override"] and vsock:
            vsock = dict(vsock, uds_path=p["vsock_override"]["uds_path"])
        self.machine_cfg, self.drives, self.nets = st["machine-config"], st["drives"], nets
        self.vsock, self.entropy = vsock, st["entropy"]
        self.machine_cfg["track_dirty_pages"] = p["track_dirty_pages"] or p["enable_diff_snapshots"]
        self.vm = self._machine()
        try:
            self.vm.restore(backend["backend_path"], p["resume_vm"])
        except Exception as e:
            self.vm.kill()
            self.vm = None
            raise Fault(err + str(e))
        headers = []
        if p["mem_file_path"] is not None or p["enable_diff_snapshots"]:
            headers = [("Deprecation", "true")]
        return Response(204, headers=headers)


def _os_error(e):
    return "%s (os error %d)" % (os.strerror(e.errno), e.errno) if e.errno else str(e)
