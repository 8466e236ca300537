import Foundation
import VouchBackends
import VouchSupport

/// A test: its machines and limits, read from a JSON spec file.
///
/// ```json
/// { "name": "demo", "globalTimeout": 900,
///   "machines": { "server": { "image": "systemd", "memory": 512 },
///                 "client": { "image": "minimal" } } }
/// ```
/// Unknown keys are errors, so a typo is reported rather than ignored. Each
/// machine's keys are those of its backend (see `BackendRegistry`).
public struct TestSpec: Sendable {
    /// The test's name (JUnit suite, log); defaults to the spec file's name.
    public var name: String
    /// Seconds before the whole test is stopped (exit status 143).
    public var globalTimeout: Double
    /// The machines, sorted by name (nixpkgs numbers nodes in this order).
    public var machines: [MachineSpec]
    /// How VLANs are built: `vde` switches (default), or `tap` devices on
    /// bridges in a private network namespace.
    public var network: NetworkKind = .vde
    /// `"snapshotAfterBoot": true`: as `vouch run --snapshot-after-boot`.
    public var snapshotAfterBoot = false

    /// A spec with these machines; `globalTimeout` in seconds.
    public init(name: String, globalTimeout: Double = 3600, machines: [MachineSpec]) {
        self.name = name
        self.globalTimeout = globalTimeout
        self.machines = machines.sorted { $0.name < $1.name }
    }

    /// Keys every machine has, whatever its backend.
    static let commonMachineKeys: Set<String> = ["backend", "bootTimeout", "vlans"]

    /// Reads a spec file.
    /// - Throws: `.invalidSpec` naming the file and the offending key.
    public static func load(_ url: URL) throws(VouchError) -> TestSpec {
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw VouchError(.invalidSpec, "cannot read spec file \(url.path)", cause: SystemCallError("open \(url.path)"))
        }
        let json: JSONValue
        do { json = try JSONValue.parse(Array(data)) } catch {
            throw VouchError(.invalidSpec, "\(url.path) is not valid JSON: \(error.message.replacingOccurrences(of: "malformed JSON: ", with: ""))")
        }
        do {
            return try parse(json, defaultName: url.deletingPathExtension().lastPathComponent)
        } catch {
            throw VouchError(.invalidSpec, "\(url.path): \(error.message)", machine: error.machine)
        }
    }

    /// Parses a spec from JSON, checking every machine against its backend.
    /// - Throws: `.invalidSpec` naming the offending key.
    public static func parse(_ json: JSONValue, defaultName: String = "test") throws(VouchError) -> TestSpec {
        let top = try SpecObject(json, path: "spec")
        try top.allow(["name", "globalTimeout", "machines", "network", "snapshotAfterBoot"])
        let name = try top.string("name") ?? defaultName
        let timeout = try top.number("globalTimeout") ?? 3600
        guard timeout > 0 else { throw SpecObject.invalid("spec.globalTimeout must be positive") }
        guard case .object(let nodes)? = top.value("machines") else {
            throw SpecObject.invalid("spec.machines must be an object of machine name → settings")
        }
        // No machines is a valid test, as in nixpkgs (`nodes = { }`): the script may `create_machine`.
        var machines: [MachineSpec] = []
        for (node, value) in nodes.sorted(by: { $0.key < $1.key }) { machines.append(try parseMachine(name: node, value)) }
        var spec = TestSpec(name: name, globalTimeout: timeout, machines: machines)
        spec.network = try top.choice("network", NetworkKind.self) ?? .vde
        spec.snapshotAfterBoot = try top.bool("snapshotAfterBoot") ?? false
        try spec.validate()
        return spec
    }

    static func parseMachine(name: String, _ json: JSONValue) throws(VouchError) -> MachineSpec {
        let path = "machines.\(name)"
        try NodeNames.check(name, at: path)
        let o = try SpecObject(json, path: path)
        let backend = try o.string("backend") ?? "qemu"
        let provider: any BackendProvider
        do { provider = try BackendRegistry.provider(named: backend) } catch {
            throw SpecObject.invalid("\(path).backend: \(error.message)")
        }
        let allowed = commonMachineKeys.union(provider.keys)
        if let key = o.unknownKeys(allowed).first {
            if let owner = BackendRegistry.providers.first(where: { $0.keys.contains(key) }) {
                throw SpecObject.invalid("\(path).\(key): not used by the \(backend) backend (it is a key of the \(owner.name) backend)")
            }
            throw SpecObject.invalid("\(path).\(key): unknown key\(SpecObject.suggestion(for: key, among: allowed))")
        }
        var m = MachineSpec(name: name, settings: Unparsed())
        m.bootTimeout = try o.number("bootTimeout") ?? 300
        guard m.bootTimeout > 0 else { throw SpecObject.invalid("\(path).bootTimeout must be positive") }
        if let vlans = o.value("vlans") {
            guard let list = vlans.arrayValue, list.allSatisfy({ $0.intValue != nil }) else {
                throw SpecObject.invalid("\(path).vlans must be an array of VLAN numbers")
            }
            m.vlans = list.compactMap(\.intValue)
            guard m.vlans.allSatisfy({ (1...255).contains($0) }) else {
                throw SpecObject.invalid("\(path).vlans: VLAN numbers must be within 1...255")
            }
        }
        try provider.parse(o, into: &m)
        return m
    }

    /// What a machine's settings are before its provider has read them.
    private struct Unparsed: BackendSettings {
        static let backend = "unparsed"
    }

    /// Checks what involves several machines: distinct names once mangled,
    /// and a network plan that fits.
    /// - Throws: `.invalidSpec`.
    public func validate() throws(VouchError) {
        for machine in machines {
            try NodeNames.check(machine.name, at: "machines.\(machine.name)")
            try BackendRegistry.provider(named: machine.backend).validate(machine, network: network)
        }
        try NodeNames.checkDistinct(machines.map(\.name))
        _ = try NetworkPlan(machines: machines.map { ($0.name, $0.vlans) })
    }

    /// Checks everything that can be known before anything starts: the
    /// spec, every machine's backend (images exist, the host has what it
    /// needs), and the names against the script's language. `vouch check`
    /// and `Driver` both call this.
    /// - Throws: `.invalidSpec`, `.missingImage`, `.unsupported`, naming the machine.
    public func check(accelerator: Accelerator.Choice? = nil, script: NodeNames.ScriptLanguage? = nil) throws(VouchError) {
        _ = try plans(accelerator: accelerator, script: script)
    }

    func plans(accelerator: Accelerator.Choice?, script: NodeNames.ScriptLanguage?) throws(VouchError) -> [(MachineSpec, BackendPlan, any BackendProvider)] {
        try validate()
        if let script { try NodeNames.check(machines.map(\.name), for: script) }
        let run = RunEnvironment(network: network, accelerator: accelerator)
        var plans: [(MachineSpec, BackendPlan, any BackendProvider)] = []
        for machine in machines {
            let provider = try BackendRegistry.provider(named: machine.backend)
            plans.append((machine, try provider.prepare(machine, in: run), provider))
        }
        return plans
    }
}
