"""Firecracker's request bodies (firecracker.yaml definitions, with field
order, required-ness, defaults and deny_unknown_fields taken from the serde
structs in src/vmm/src/vmm_config/*.rs, which is what really validates)."""
from .schema import BOOL, PATH, STR, U8, U16, U32, U64, USIZE, Enum, MapOf, Opt, Seq, Struct

# (name, type, required[, default]); serde lists fields in declaration order
# in "expected one of" messages, so the order here matters.
TOKEN_BUCKET = Struct("TokenBucketConfig", [
    ("size", U64, True), ("one_time_burst", Opt(U64), False), ("refill_time", U64, True)],
    deny_unknown=False)
RATE_LIMITER = Struct("RateLimiterConfig", [
    ("bandwidth", Opt(TOKEN_BUCKET), False), ("ops", Opt(TOKEN_BUCKET), False)])

CPU_TEMPLATE = Enum("StaticCpuTemplate", ["C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"])
HUGE_PAGES = Enum("HugePageConfig", ["None", "Transparent", "2M"])

MACHINE_CONFIG = Struct("MachineConfig", [
    ("vcpu_count", U8, True), ("mem_size_mib", USIZE, True), ("smt", BOOL, False, False),
    ("cpu_template", Opt(CPU_TEMPLATE), False), ("track_dirty_pages", BOOL, False, False),
    ("huge_pages", HUGE_PAGES, False, "None")])
MACHINE_CONFIG_UPDATE = Struct("MachineConfigUpdate", [
    ("vcpu_count", Opt(U8), False), ("mem_size_mib", Opt(USIZE), False), ("smt", Opt(BOOL), False),
    ("cpu_template", Opt(CPU_TEMPLATE), False), ("track_dirty_pages", Opt(BOOL), False),
    ("huge_pages", Opt(HUGE_PAGES), False)])

BOOT_SOURCE = Struct("BootSourceConfig", [
    ("kernel_image_path", STR, True), ("initrd_path", Opt(STR), False), ("boot_args", Opt(STR), False)])

DRIVE = Struct("BlockDeviceConfig", [
    ("drive_id", STR, True), ("partuuid", Opt(STR), False), ("is_root_device", BOOL, True),
    ("cache_type", Enum("CacheType", ["Unsafe", "Writeback"]), False, "Unsafe"),
    ("is_read_only", Opt(BOOL), False), ("path_on_host", Opt(STR), False),
    ("rate_limiter", Opt(RATE_LIMITER), False),
    ("io_engine", Opt(Enum("FileEngineType", ["Async", "Sync"])), False), ("socket", Opt(STR), False)])
DRIVE_UPDATE = Struct("BlockDeviceUpdateConfig", [
    ("drive_id", STR, True), ("path_on_host", Opt(STR), False), ("rate_limiter", Opt(RATE_LIMITER), False)])

NET = Struct("NetworkInterfaceConfig", [
    ("iface_id", STR, True), ("host_dev_name", STR, True), ("guest_mac", Opt(STR), False),
    ("mtu", Opt(U16), False),
    ("rx_rate_limiter", Opt(RATE_LIMITER), False), ("tx_rate_limiter", Opt(RATE_LIMITER), False)])
NET_UPDATE = Struct("NetworkInterfaceUpdateConfig", [
    ("iface_id", STR, True),
    ("rx_rate_limiter", Opt(RATE_LIMITER), False), ("tx_rate_limiter", Opt(RATE_LIMITER), False)])

VSOCK = Struct("VsockDeviceConfig", [
    ("vsock_id", Opt(STR), False), ("guest_cid", U32, True), ("uds_path", STR, True)])
ENTROPY = Struct("EntropyDeviceConfig", [("rate_limiter", Opt(RATE_LIMITER), False)])
LOGGER = Struct("LoggerConfig", [
    ("log_path", Opt(PATH), False), ("level", Opt(STR), False), ("show_level", Opt(BOOL), False),
    ("show_log_origin", Opt(BOOL), False), ("module", Opt(STR), False)])
METRICS = Struct("MetricsConfig", [
    ("metrics_path", PATH, True), ("emit_id", BOOL, False, False),
    ("properties", Opt(MapOf(STR)), False)], deny_unknown=False)

ACTION = Struct("ActionBody", [
    ("action_type", Enum("ActionType", ["FlushMetrics", "InstanceStart", "SendCtrlAltDel"]), True)])
VM = Struct("Vm", [("state", Enum("VmState", ["Paused", "Resumed"]), True)])

SNAPSHOT_CREATE = Struct("CreateSnapshotParams", [
    ("snapshot_type", Enum("SnapshotType", ["Diff", "Full"]), False, "Full"),
    ("snapshot_path", PATH, True), ("mem_file_path", PATH, True)])
MEM_BACKEND = Struct("MemBackendConfig", [
    ("backend_path", PATH, True), ("backend_type", Enum("MemBackendType", ["File", "Uffd"]), True)])
NETWORK_OVERRIDE = Struct("NetworkOverride", [
    ("iface_id", STR, True), ("host_dev_name", STR, True)], deny_unknown=False)
VSOCK_OVERRIDE = Struct("VsockOverride", [("uds_path", STR, True)], deny_unknown=False)
SNAPSHOT_LOAD = Struct("LoadSnapshotConfig", [
    ("snapshot_path", PATH, True), ("mem_file_path", Opt(PATH), False),
    ("mem_backend", Opt(MEM_BACKEND), False), ("enable_diff_snapshots", BOOL, False, False),
    ("track_dirty_pages", BOOL, False, False), ("resume_vm", BOOL, False, False),
    ("network_overrides", Seq(NETWORK_OVERRIDE), False, []),
    ("vsock_override", Opt(VSOCK_OVERRIDE), False), ("clock_realtime", BOOL, False, False),
    ("huge_pages", Enum("SnapshotLoadHugePageConfig", ["Snapshot", "None", "Transparent", "2M"]),
     False, "Snapshot")])
