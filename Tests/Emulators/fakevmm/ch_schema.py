"""cloud-hypervisor's request bodies, from the serde structs in
vmm/src/vm_config.rs, vmm/src/config.rs (RestoreConfig) and vmm/src/api/mod.rs
(VmSnapshotConfig). None of them has deny_unknown_fields: unknown keys are
ignored, as serde does by default. Field order, required-ness (a field with
neither #[serde(default)] nor Option is required) and defaults follow the
source; devices the emulator does not model are type-checked only as "some
JSON value" and passed through."""
from .schema import BOOL, PATH, STR, U8, U16, U32, U64, USIZE, Enum, Opt, Seq, Struct


class Any:
    """A field the emulator stores but does not model (balloon, fs, ...)."""

    def check(self, node, text):
        return _plain(node)


def _plain(node):
    if node.kind == "object":
        return {k: _plain(v) for k, _, v in node.entries}
    if node.kind == "array":
        return [_plain(v) for v in node.entries]
    return node.value


ANY = Any()


def S(name, fields):
    return Struct(name, fields, deny_unknown=False)


# PciDeviceCommonConfig is #[serde(flatten)]ed into each device.
PCI_COMMON = [("id", Opt(STR), False), ("iommu", BOOL, False, False), ("pci_segment", U16, False, 0),
              ("pci_device_id", Opt(U8), False)]

CPU_AFFINITY = S("CpuAffinity", [("vcpu", U32, True), ("host_cpus", Seq(USIZE), True)])
CPU_TOPOLOGY = S("CpuTopology", [("threads_per_core", U16, True), ("cores_per_die", U16, True),
                                 ("dies_per_package", U16, True), ("packages", U16, True)])
CPUS = S("CpusConfig", [
    ("boot_vcpus", U32, True), ("max_vcpus", U32, True), ("topology", Opt(CPU_TOPOLOGY), False),
    ("kvm_hyperv", BOOL, False, False), ("max_phys_bits", U8, False, 46),
    ("affinity", Opt(Seq(CPU_AFFINITY)), False), ("features", S("CpuFeatures", [("amx", BOOL, False, False)]),
                                                  False, {"amx": False}),
    ("nested", BOOL, False, True), ("core_scheduling", Enum("CoreScheduling", ["Vm", "Vcpu", "Off"]), False, "Vm"),
    ("profile", ANY, False, "Host")])
CPUS_DEFAULT = {"boot_vcpus": 1, "max_vcpus": 1, "kvm_hyperv": False, "max_phys_bits": 46,
                "features": {"amx": False}, "nested": True, "core_scheduling": "Vm", "profile": "Host"}

MEMORY = S("MemoryConfig", [
    ("size", U64, True), ("mergeable", BOOL, False, False),
    ("hotplug_method", Enum("HotplugMethod", ["Acpi", "VirtioMem"]), False, "Acpi"),
    ("hotplug_size", Opt(U64), False), ("hotplugged_size", Opt(U64), False), ("shared", BOOL, False, False),
    ("hugepages", BOOL, False, False), ("hugepage_size", Opt(U64), False), ("prefault", BOOL, False, False),
    ("reserve", BOOL, False, False), ("zones", Opt(Seq(ANY)), False), ("thp", BOOL, False, True)])
MEMORY_DEFAULT = {"size": 512 << 20, "mergeable": False, "hotplug_method": "Acpi", "shared": False,
                  "hugepages": False, "prefault": False, "reserve": False, "thp": True}

PAYLOAD = S("PayloadConfig", [("firmware", Opt(PATH), False), ("kernel", Opt(PATH), False),
                              ("cmdline", Opt(STR), False), ("initramfs", Opt(PATH), False)])

DISK = S("DiskConfig", PCI_COMMON + [
    ("path", Opt(PATH), False), ("readonly", BOOL, False, False), ("direct", BOOL, False, False),
    ("num_queues", USIZE, False, 1), ("queue_size", U16, False, 128), ("vhost_user", BOOL, False, False),
    ("vhost_socket", Opt(STR), False), ("rate_limit_group", Opt(STR), False),
    ("rate_limiter_config", Opt(ANY), False), ("disable_io_uring", BOOL, False, False),
    ("disable_aio", BOOL, False, False), ("serial", Opt(STR), False), ("queue_affinity", Opt(ANY), False),
    ("backing_files", BOOL, False, False), ("sparse", BOOL, False, True), ("image_type", ANY, False, "Unknown"),
    ("lock_granularity", ANY, False, "ByteRange")])

NET = S("NetConfig", PCI_COMMON + [
    ("tap", Opt(STR), False), ("ip", Opt(STR), False), ("mask", Opt(STR), False), ("mac", Opt(STR), False),
    ("host_mac", Opt(STR), False), ("mtu", Opt(U16), False), ("num_queues", USIZE, False, 2),
    ("queue_size", U16, False, 256), ("vhost_user", BOOL, False, False), ("vhost_socket", Opt(STR), False),
    ("vhost_mode", Enum("VhostMode", ["Client", "Server"]), False, "Client"), ("fds", Opt(Seq(ANY)), False),
    ("rate_limiter_config", Opt(ANY), False), ("offload_tso", BOOL, False, True),
    ("offload_ufo", BOOL, False, True), ("offload_csum", BOOL, False, True)])

RNG = S("RngConfig", PCI_COMMON + [("src", PATH, True)])
RNG_DEFAULT = {"iommu": False, "pci_segment": 0, "src": "/dev/urandom"}

MODE = Enum("ConsoleOutputMode", ["Off", "Pty", "Tty", "File", "Socket", "Null"])
COMMON_CONSOLE = [("file", Opt(PATH), False), ("mode", MODE, True), ("socket", Opt(PATH), False)]
SERIAL = S("SerialConfig", COMMON_CONSOLE)
CONSOLE = S("ConsoleConfig", COMMON_CONSOLE + PCI_COMMON)
SERIAL_DEFAULT = {"mode": "Null"}      # SerialConfig::default()
CONSOLE_DEFAULT = {"mode": "Tty", "iommu": False, "pci_segment": 0}  # ConsoleConfig::default()
DEBUG_CONSOLE = S("DebugConsoleConfig", [("file", Opt(PATH), False), ("mode", MODE, True),
                                         ("iobase", Opt(U16), False)])
DEBUG_CONSOLE_DEFAULT = {"mode": "Off", "iobase": 0xe9}

VSOCK = S("VsockConfig", PCI_COMMON + [("cid", U32, True), ("socket", PATH, True)])

VM_CONFIG = S("VmConfig", [
    ("cpus", CPUS, False, CPUS_DEFAULT), ("memory", MEMORY, False, MEMORY_DEFAULT),
    ("payload", Opt(PAYLOAD), False), ("rate_limit_groups", Opt(Seq(ANY)), False),
    ("disks", Opt(Seq(DISK)), False), ("net", Opt(Seq(NET)), False), ("rng", RNG, False, RNG_DEFAULT),
    ("balloon", Opt(ANY), False), ("generic_vhost_user", Opt(Seq(ANY)), False), ("fs", Opt(Seq(ANY)), False),
    ("pmem", Opt(Seq(ANY)), False), ("serial", SERIAL, False, SERIAL_DEFAULT),
    ("console", CONSOLE, False, CONSOLE_DEFAULT), ("debug_console", DEBUG_CONSOLE, False, DEBUG_CONSOLE_DEFAULT),
    ("devices", Opt(Seq(ANY)), False), ("user_devices", Opt(Seq(ANY)), False), ("vdpa", Opt(Seq(ANY)), False),
    ("vsock", Opt(VSOCK), False), ("pvpanic", BOOL, False, False), ("iommu", BOOL, False, False),
    ("numa", Opt(Seq(ANY)), False), ("watchdog", BOOL, False, False), ("rtc", Opt(ANY), False),
    ("pci_segments", Opt(Seq(ANY)), False), ("platform", Opt(ANY), False), ("tpm", Opt(ANY), False),
    ("landlock_enable", BOOL, False, False), ("landlock_rules", Opt(Seq(ANY)), False)])

SNAPSHOT = S("VmSnapshotConfig", [("destination_url", STR, True)])
RESTORE = S("RestoreConfig", [
    ("source_url", PATH, True), ("prefault", BOOL, False, False),
    ("memory_restore_mode", Enum("MemoryRestoreMode", ["Copy", "OnDemand"]), False, "Copy"),
    ("net_fds", Opt(Seq(ANY)), False), ("vfio_fds", Opt(Seq(ANY)), False), ("iommufd_fd", Opt(ANY), False),
    ("resume", BOOL, False, False), ("zone_updates", Seq(ANY), False, [])])


def strip_none(v):
    """serde_with::skip_serializing_none: None fields are left out of vm.info."""
    if isinstance(v, dict):
        return {k: strip_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [strip_none(x) for x in v]
    return v
