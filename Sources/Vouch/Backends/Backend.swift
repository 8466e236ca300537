import Glibc

/// What a backend must do for a `Machine`: bring a guest up, hand over the
/// channel to its backdoor shell, and take it down again.
///
/// A backend owns every process, socket and temporary file it creates and
/// releases them in `stop()`, whatever state the guest is in.
protocol Backend: AnyObject, Sendable {
    /// "qemu", "nspawn", ... for messages.
    var kind: String { get }

    /// Starts the guest and returns the channel its backdoor shell will use
    /// (the banner has not necessarily been printed yet).
    /// - Throws: `VouchError.bootFailed` / `.spawnFailed` / `.missingImage`.
    func start() async throws -> GuestChannel

    /// Waits until the guest's process has exited.
    /// - Throws: `CancellationError`; `VouchError.bootFailed` if never started.
    func waitForExit() async throws -> ExitStatus

    /// The exit status, or nil while running (or before start).
    var exitStatus: ExitStatus? { get }

    /// Lets the next guest reboot reset the machine instead of ending it.
    /// - Throws: `VouchError.unsupported` or a control-channel error.
    func allowReboot(_ allowed: Bool) async throws

    /// Cuts (`up == false`) or restores every network link of the machine.
    /// - Throws: `VouchError.unsupported` where the backend cannot.
    func setLinks(up: Bool) async throws

    /// Makes `hostPort` on the host's loopback reach `guestPort` in the guest.
    /// - Throws: `VouchError.unsupported` where the backend cannot.
    func forwardPort(hostPort: Int, guestPort: Int) async throws

    /// Stops the guest abruptly, like pulling the power cord.
    /// - Throws: a control-channel error; the process is gone either way.
    func crash() async throws

    /// Runs a QEMU human-monitor command (e.g. `info status`) and returns
    /// what the monitor printed.
    /// - Throws: `VouchError.unsupported` for backends without a QEMU monitor.
    func monitorCommand(_ command: String) async throws -> String

    /// Sends a key combination, e.g. `["ctrl", "alt", "delete"]`.
    /// - Throws: `VouchError.unsupported` where there is no keyboard.
    func sendKeys(_ keys: [String]) async throws

    /// Releases everything: the guest process, sockets and, unless `keepState`,
    /// the state directory. Idempotent and never throws; bounded in time.
    func stop(keepState: Bool) async

    /// Throws before `Machine` touches any state if `operation` cannot work
    /// on this backend (defaults in BackendDefaults.swift: everything works).
    func check(_ operation: MachineOperation) throws

    /// Where the guest sees the host's shared directory (`/tmp/shared` for
    /// VMs and containers).
    var guestSharedDirectory: String { get }

    /// Makes `item` (a name inside the shared directory) visible to the guest,
    /// for backends without a live shared directory (SSH copies it over).
    func pushShared(_ item: String) async throws

    /// Brings `item` back from the guest into the host's shared directory.
    func pullShared(_ item: String) async throws
}

/// What every backend is given about the machine it runs.
struct MachineContext: Sendable {
    let name: String
    /// Private directory for this machine's sockets, overlays and state.
    let stateDirectory: String
    /// Directory shared with the guest at /tmp/shared (one per test run).
    let sharedDirectory: String
    let log: TestLog
    let console: Console
    /// The machine's network cards and addressing, or nil without a network.
    var network: MachineNetwork? = nil
}

/// A machine's network cards, each attached to its VLAN's switch.
struct MachineNetwork: Sendable {
    struct Attachment: Sendable {
        let nic: NetworkPlan.NIC
        /// The VLAN switch's socket directory (VDE networks).
        let switchDirectory: String
        /// The TAP device in the test's network namespace (TAP networks).
        var tap: String? = nil
    }

    let attachments: [Attachment]
    /// For TAP networks: the `nsenter` arguments that put the VM into the
    /// test's network namespace (known once the run has started).
    var enterNamespace: @Sendable () -> [String]? = { nil }
    /// Addressing for guests Vouch builds (`vouch.ip=`, `vouch.hosts=`).
    let kernelParameters: String
    /// MAC of the user-mode card that `forwardPort` uses (direct boot only).
    let forwardingMAC: String
}
