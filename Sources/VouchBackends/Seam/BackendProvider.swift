import VouchSupport

/// How a test's VLANs are built.
public enum NetworkKind: String, Sendable, CaseIterable {
    /// `vde_switch` hubs, one per VLAN (the default, as in nixpkgs).
    case vde
    /// TAP devices on bridges in a private network namespace.
    case tap
}

/// The settings a backend reads from a machine's spec, beyond the keys
/// every machine has (`backend`, `bootTimeout`, `vlans`).
public protocol BackendSettings: Sendable {
    /// The backend these settings belong to, as the spec names it.
    static var backend: String { get }
}

/// One machine of a test: its name, the keys every backend shares, and its
/// backend's own settings.
public struct MachineSpec: Sendable {
    /// The node name (a script variable after mangling).
    public var name: String
    /// Seconds from start until the backdoor shell must answer.
    public var bootTimeout: Double = 300
    /// The VLANs the machine has a network card on (nixpkgs' default: VLAN 1).
    public var vlans: [Int] = [1]
    /// The backend's settings; their type says which backend runs the machine.
    public var settings: any BackendSettings

    /// The backend's name ("qemu", "nspawn", "ssh", ...).
    public var backend: String { type(of: settings).backend }

    /// A machine run by the backend `settings` belong to.
    public init(name: String, settings: any BackendSettings) {
        self.name = name
        self.settings = settings
    }
}

/// What a run tells a provider when it prepares a machine.
package struct RunEnvironment: Sendable {
    /// How the test's VLANs are built.
    package var network: NetworkKind
    /// An accelerator forced for every VM (`--accel`), if any.
    package var accelerator: Accelerator.Choice?

    package init(network: NetworkKind = .vde, accelerator: Accelerator.Choice? = nil) {
        self.network = network
        self.accelerator = accelerator
    }
}

/// How to make one machine's backend, decided before anything starts.
package struct BackendPlan: Sendable {
    /// Makes a fresh backend for the machine (again after a crash or a failed restore).
    package let make: @Sendable (MachineContext) -> any Backend
    /// The unit whose activation means "booted", for images with systemd.
    package let readyUnit: String?

    package init(readyUnit: String?, make: @escaping @Sendable (MachineContext) -> any Backend) {
        self.make = make
        self.readyUnit = readyUnit
    }
}

/// A machine setup a benchmark can run on its own: the machines, and shell
/// steps that prepare them before the measured machine is used.
package struct BenchmarkPlan: Sendable {
    /// One preparation step, on one of `machines`.
    package enum Step: Sendable {
        case succeed(machine: String, command: String)
        case waitForUnit(machine: String, unit: String)
        case forwardPort(machine: String, host: Int, guest: Int)
    }

    /// The machines; the one measured is named `measured`.
    package var machines: [MachineSpec]
    package var measured: String
    package var steps: [Step] = []
    /// What the measured machine really runs on, for the table (a VMM's
    /// version, and whether it is Vouch's emulator).
    package var runsOn: String

    package init(machines: [MachineSpec], measured: String, steps: [Step] = [], runsOn: String = "") {
        self.machines = machines
        self.measured = measured
        self.steps = steps
        self.runsOn = runsOn
    }
}

/// Everything about one backend that is not running a machine: its spec
/// keys, validation, defaults and construction. One provider per backend
/// folder, listed in `BackendRegistry`.
package protocol BackendProvider: Sendable {
    /// The name a spec's `"backend"` key uses.
    var name: String { get }

    /// The spec keys this backend reads, besides `backend`, `bootTimeout` and `vlans`.
    var keys: Set<String> { get }

    /// Reads this backend's keys from a machine's spec object into
    /// `machine.settings`; may adjust the common fields (an existing host is
    /// on no VLAN).
    /// - Throws: `.invalidSpec` naming the key and what is wrong.
    func parse(_ object: SpecObject, into machine: inout MachineSpec) throws(VouchError)

    /// Checks a parsed machine against the rest of the spec (without looking
    /// at the host): e.g. whether it can join VLANs of this network kind.
    /// - Throws: `.invalidSpec` naming the machine and the rule.
    func validate(_ machine: MachineSpec, network: NetworkKind) throws(VouchError)

    /// Checks everything that can be checked before anything starts (files
    /// exist, the host has what the backend needs, the network fits) and
    /// says how to make the backend.
    /// - Throws: `.invalidSpec`, `.missingImage`, `.unsupported`, naming the machine.
    func prepare(_ machine: MachineSpec, in run: RunEnvironment) throws(VouchError) -> BackendPlan

    /// The section of a nixpkgs driver configuration this backend runs
    /// (`vms`, `containers`), if any.
    var nixpkgsSection: String? { get }

    /// The machine for a nixpkgs configuration entry with this start script.
    func machine(name: String, startScript: String) -> MachineSpec?

    /// More words for "X is not supported by the Y backend", if any.
    func whyMissing(_ capability: Capability) -> String?

    /// A self-contained setup for `vouch bench --backends` on `image`, with
    /// scratch files in `workDirectory`.
    /// - Throws: `.unsupported` when this backend cannot be benchmarked here.
    func benchmarkPlan(image: String, workDirectory: String) throws(VouchError) -> BenchmarkPlan
}

extension BackendProvider {
    package func validate(_ machine: MachineSpec, network: NetworkKind) throws(VouchError) {}
    package var nixpkgsSection: String? { nil }
    package func machine(name: String, startScript: String) -> MachineSpec? { nil }
    package func whyMissing(_ capability: Capability) -> String? { nil }
}
