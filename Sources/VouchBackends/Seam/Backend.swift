import Glibc
import VouchGuest
import VouchSupport

/// What every backend does for a `Machine`: bring a guest up, hand over the
/// channel to its backdoor shell, and take it down again.
///
/// A backend owns every process, socket and temporary file it creates and
/// releases them in `stop()`, whatever state the guest or its VMM is in.
/// What only some backends can do is an optional capability protocol
/// (`Capabilities.swift`) the backend adopts; `Machine` reports a clear
/// "not supported by the X backend" when one is missing.
package protocol Backend: AnyObject, Sendable {
    /// The provider's name ("qemu", "nspawn", ...), for messages.
    var kind: String { get }

    /// Starts the guest and returns the channel its backdoor shell will use
    /// (the banner has not necessarily been printed yet).
    /// - Throws: `.bootFailed` / `.spawnFailed` / `.missingImage` /
    ///   `.unsupported` (the host lacks what the backend needs); `.cancelled`.
    func start() async throws(VouchError) -> GuestChannel

    /// Waits until the guest's process has exited.
    /// - Throws: `.cancelled`; `.bootFailed` if it was never started.
    func waitForExit() async throws(VouchError) -> ExitStatus

    /// The exit status, or nil while running (or before start).
    var exitStatus: ExitStatus? { get }

    /// Releases everything: the guest process, sockets and, unless
    /// `keepState`, the state directory. Idempotent, never throws, and done
    /// within a few seconds whatever the guest or VMM does (SIGKILL last).
    func stop(keepState: Bool) async

    /// What is notable about the VMM or container process right now, for
    /// messages when something did not answer (e.g. "QEMU (pid 12) is
    /// stopped (SIGSTOP or a debugger)"); nil when nothing is.
    func diagnose() async -> String?
}

extension Backend {
    /// Nothing to say by default.
    package func diagnose() async -> String? { nil }
}

/// What every backend is given about the machine it runs.
package struct MachineContext: Sendable {
    package let name: String
    /// Private directory for this machine's sockets, overlays and state.
    package let stateDirectory: String
    /// Directory shared with the guest at /tmp/shared (one per test run).
    package let sharedDirectory: String
    package let log: TestLog
    package let console: Console
    /// Where the backend reports a VMM fault (a pause on a disk error, a
    /// guest panic), which fails every waiting call at once.
    package let health: MachineHealth
    /// The machine's network cards and addressing, or nil without a network.
    package var network: MachineNetwork?

    package init(
        name: String, stateDirectory: String, sharedDirectory: String, log: TestLog, console: Console,
        health: MachineHealth = MachineHealth(), network: MachineNetwork? = nil
    ) {
        self.name = name
        self.stateDirectory = stateDirectory
        self.sharedDirectory = sharedDirectory
        self.log = log
        self.console = console
        self.health = health
        self.network = network
    }
}

/// A machine's network cards, each attached to its VLAN's switch.
package struct MachineNetwork: Sendable {
    package struct Attachment: Sendable {
        package let nic: NetworkPlan.NIC
        /// The VLAN switch's socket directory (VDE networks).
        package let switchDirectory: String
        /// The TAP device in the test's network namespace (TAP networks).
        package var tap: String?

        package init(nic: NetworkPlan.NIC, switchDirectory: String, tap: String? = nil) {
            self.nic = nic
            self.switchDirectory = switchDirectory
            self.tap = tap
        }
    }

    package let attachments: [Attachment]
    /// For TAP networks: the `nsenter` arguments that put a process into the
    /// test's network namespace (known once the run has started).
    package var enterNamespace: @Sendable () -> [String]?
    /// Addressing for guests Vouch builds (`vouch.ip=`, `vouch.hosts=`).
    package let kernelParameters: String
    /// MAC of the user-mode card that `forwardPort` uses (direct boot only).
    package let forwardingMAC: String

    package init(
        attachments: [Attachment], enterNamespace: @escaping @Sendable () -> [String]? = { nil },
        kernelParameters: String, forwardingMAC: String
    ) {
        self.attachments = attachments
        self.enterNamespace = enterNamespace
        self.kernelParameters = kernelParameters
        self.forwardingMAC = forwardingMAC
    }
}

extension ChildProcess {
    /// A line about this process's scheduler state when it is not simply
    /// running or sleeping: stopped (SIGSTOP, a debugger), a zombie, or in
    /// uninterruptible sleep. nil otherwise.
    package func stateNote(as name: String) -> String? {
        guard exitStatus == nil,
              let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")")
        else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        switch fields.first {
        case "T", "t": return "\(name) (pid \(pid)) is stopped (SIGSTOP or a debugger): it cannot run the guest"
        case "D": return "\(name) (pid \(pid)) is stuck in uninterruptible sleep (waiting on a disk or the kernel)"
        case "Z": return "\(name) (pid \(pid)) has exited and not been reaped yet"
        default: return nil
        }
    }
}
