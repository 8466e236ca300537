import Foundation
import VouchSupport

/// Settings of the `nspawn` backend (`"backend": "nspawn"`).
public struct NspawnSettings: BackendSettings, Equatable {
    public static let backend = "nspawn"

    /// A built-in image (default `systemd`) whose unpacked root is booted.
    public var image: String?
    /// A root filesystem directory to boot instead of an image's.
    public var rootDirectory: String?
    /// A nixpkgs `run-NAME-nspawn` start script that runs nspawn itself.
    public var startScript: String?
    /// The unit whose activation means "booted" (default: the image's, else
    /// `default.target`; `multi-user.target` for start scripts).
    public var readyUnit: String?
    /// Extra `systemd-nspawn` arguments.
    public var extraArgs: [String] = []

    /// Defaults: the `systemd` image, its ready unit, no extra arguments.
    public init() {}
}

extension MachineSpec {
    /// A container.
    public init(name: String, nspawn: NspawnSettings) {
        self.init(name: name, settings: nspawn)
    }

    /// The nspawn settings, if this is a container.
    public var nspawn: NspawnSettings? {
        get { settings as? NspawnSettings }
        set { if let newValue { settings = newValue } }
    }
}

/// The `nspawn` backend: a systemd-nspawn container per machine.
package struct NspawnProvider: BackendProvider {
    package let name = NspawnSettings.backend

    package let keys: Set<String> = ["image", "rootDirectory", "startScript", "readyUnit", "nspawnArgs"]

    package init() {}

    package func parse(_ o: SpecObject, into machine: inout MachineSpec) throws(VouchError) {
        var n = NspawnSettings()
        n.image = try o.string("image")
        n.rootDirectory = try o.string("rootDirectory")
        n.startScript = try o.string("startScript")
        n.readyUnit = try o.string("readyUnit")
        n.extraArgs = try o.strings("nspawnArgs") ?? []
        if [n.rootDirectory != nil, n.image != nil, n.startScript != nil].filter({ $0 }).count > 1 {
            throw SpecObject.invalid("\(o.path): give only one of image, rootDirectory or startScript")
        }
        if !n.extraArgs.isEmpty, n.startScript != nil {
            throw SpecObject.invalid("\(o.path).nspawnArgs: a start script runs systemd-nspawn itself")
        }
        if n.rootDirectory == nil, n.startScript == nil, n.image == nil { n.image = "systemd" }
        if n.startScript != nil {
            // The script wires the container's network itself (nixpkgs' contract).
            if o.value("vlans") != nil, !machine.vlans.isEmpty {
                throw SpecObject.invalid("\(o.path).vlans: a start script sets up its own network; use \"vlans\": []")
            }
            machine.vlans = []
        }
        machine.settings = n
    }

    package func validate(_ machine: MachineSpec, network: NetworkKind) throws(VouchError) {
        // Containers join VLANs through veths on the TAP network's bridges; there is no VDE plug for them.
        if network == .vde, !machine.vlans.isEmpty {
            throw VouchError(.invalidSpec, "machines.\(machine.name): the nspawn backend needs \"network\": \"tap\" to join VLANs (or \"vlans\": [])")
        }
    }

    package func prepare(_ machine: MachineSpec, in run: RunEnvironment) throws(VouchError) -> BackendPlan {
        guard let settings = machine.nspawn else { throw VouchError(.invalidSpec, "not a container", machine: machine.name) }
        try validate(machine, network: run.network)
        let timeout = machine.bootTimeout
        if let script = settings.startScript {
            guard FileManager.default.isExecutableFile(atPath: script) else {
                throw VouchError(.missingImage, "start script \(script) does not exist or is not executable", machine: machine.name)
            }
            try NspawnHost.check(rootDirectory: nil, machine: machine.name)
            // NixOS's default target; its state is what "booted" means to the shell.
            let unit = settings.readyUnit ?? "multi-user.target"
            return BackendPlan(readyUnit: unit) {
                NspawnBackend(context: $0, source: .startScript(script), readyUnit: unit, extraArgs: [], bootTimeout: timeout)
            }
        }
        var readyUnit = settings.readyUnit
        let root: String
        if let directory = settings.rootDirectory {
            root = directory
        } else {
            let reference = settings.image ?? "systemd"
            let image: GuestImage
            do { image = try GuestImage.resolve(reference) } catch { throw error.on(machine.name) }
            guard let directory = image.rootDirectory else {
                throw VouchError(.missingImage, "image '\(reference)' has no unpacked root filesystem for containers"
                                 + " (image.json: rootDirectory); the systemd image has one once rebuilt with `vouch images build systemd`",
                                 machine: machine.name)
            }
            root = directory.path
            readyUnit = readyUnit ?? image.readyUnit
        }
        try NspawnHost.check(rootDirectory: root, machine: machine.name)
        let unit = readyUnit ?? "default.target"
        let extra = settings.extraArgs
        return BackendPlan(readyUnit: unit) {
            NspawnBackend(context: $0, source: .root(root), readyUnit: unit, extraArgs: extra, bootTimeout: timeout)
        }
    }

    package let nixpkgsSection: String? = "containers"

    package func machine(name: String, startScript: String) -> MachineSpec? {
        var n = NspawnSettings()
        n.startScript = startScript
        var machine = MachineSpec(name: name, nspawn: n)
        // The start script wires the container's network itself.
        machine.vlans = []
        return machine
    }

    package func whyMissing(_ capability: Capability) -> String? {
        switch capability {
        case .keys: "a container has no keyboard"
        case .screen: "a container has no display device"
        case .consoleInput: "a container's console is not a serial line Vouch writes to"
        case .monitor: "a container has no QEMU monitor"
        case .snapshots: "containers cannot be snapshotted yet"
        default: nil
        }
    }

    package func benchmarkPlan(image: String, workDirectory: String) throws(VouchError) -> BenchmarkPlan {
        var settings = NspawnSettings()
        settings.image = image
        var machine = MachineSpec(name: "bench", nspawn: settings)
        machine.vlans = []
        return BenchmarkPlan(machines: [machine], measured: "bench", runsOn: "systemd-nspawn")
    }
}
