import Foundation

/// A test: its machines and limits, read from a JSON spec file.
///
/// ```json
/// { "name": "demo", "globalTimeout": 900,
///   "machines": { "server": { "image": "systemd", "memory": 512 },
///                 "client": { "image": "minimal" } } }
/// ```
/// Unknown keys are errors, so a typo is reported rather than ignored.
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

    /// The ways a test network can be built.
    public enum NetworkKind: String, Sendable {
        case vde, tap
    }

    /// A spec with these machines; `globalTimeout` in seconds.
    public init(name: String, globalTimeout: Double = 3600, machines: [MachineSpec]) {
        self.name = name
        self.globalTimeout = globalTimeout
        self.machines = machines.sorted { $0.name < $1.name }
    }

    /// Reads a spec file.
    /// - Throws: `VouchError.invalidSpec` naming the file and the offending key.
    public static func load(_ url: URL) throws -> TestSpec {
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw VouchError(.invalidSpec, "cannot read spec file \(url.path)")
        }
        let json: JSONValue
        do { json = try JSONValue.parse(Array(data)) } catch {
            throw VouchError(.invalidSpec, "\(url.path) is not valid JSON: \(describe(error))")
        }
        do {
            return try parse(json, defaultName: url.deletingPathExtension().lastPathComponent)
        } catch let error as VouchError {
            throw VouchError(.invalidSpec, "\(url.path): \(error.message)")
        }
    }

    /// Parses a spec from JSON.
    /// - Throws: `VouchError.invalidSpec` naming the offending key.
    public static func parse(_ json: JSONValue, defaultName: String = "test") throws -> TestSpec {
        let top = try SpecObject(json, path: "spec")
        try top.allow(["name", "globalTimeout", "machines", "network", "snapshotAfterBoot"])
        let name = try top.string("name") ?? defaultName
        let timeout = try top.number("globalTimeout") ?? 3600
        guard timeout > 0 else { throw invalid("globalTimeout must be positive") }
        guard case .object(let nodes)? = top.value("machines") else {
            throw invalid("spec.machines must be an object of machine name → settings")
        }
        guard !nodes.isEmpty else { throw invalid("spec.machines is empty: a test needs at least one machine") }
        let machines = try nodes.map { try MachineSpec.parse(name: $0.key, $0.value) }
        var spec = TestSpec(name: name, globalTimeout: timeout, machines: machines)
        if let kind = try top.string("network") {
            guard let network = NetworkKind(rawValue: kind) else {
                throw invalid("spec.network: unknown network '\(kind)' (vde or tap)")
            }
            spec.network = network
        }
        // Containers join VLANs through veths on the TAP network's bridges;
        // there is no VDE plug for them.
        if spec.network == .vde, let m = spec.machines.first(where: { $0.backend == "nspawn" && !$0.vlans.isEmpty }) {
            throw invalid("machines.\(m.name): the nspawn backend needs \"network\": \"tap\" to join VLANs (or \"vlans\": [])")
        }
        switch top.value("snapshotAfterBoot") {
        case nil: break
        case .bool(let on)?: spec.snapshotAfterBoot = on
        default: throw invalid("spec.snapshotAfterBoot must be true or false")
        }
        return spec
    }

    static func invalid(_ message: String) -> VouchError { VouchError(.invalidSpec, message) }
}

/// One machine of a spec.
public struct MachineSpec: Sendable {
    /// The node name (a script variable after mangling).
    public var name: String
    /// "qemu", "nspawn" or "ssh".
    public var backend: String = "qemu"
    /// A built-in image name or an image directory.
    public var image: String?
    /// A kernel to boot directly instead of an image.
    public var kernel: String?
    /// The initrd for `kernel`.
    public var initrd: String?
    /// A root disk for `kernel`, used copy-on-write.
    public var disk: String?
    /// The kernel command line (added to an image's own).
    public var cmdline: String?
    /// A nixpkgs `run-NAME-vm` start script.
    public var startScript: String?
    /// Guest memory in MiB.
    public var memoryMiB: Int = 512
    /// Virtual CPUs.
    public var cpus: Int = 1
    /// Extra QEMU arguments.
    public var qemuArgs: [String] = []
    /// The QEMU machine type, or nil for the default.
    public var board: QEMUConfig.Board?
    /// KVM, TCG, or probe (`auto`).
    public var accelerator: Accelerator.Choice = .auto
    /// Seconds from start until the backdoor shell must answer.
    public var bootTimeout: Double = 300
    /// The VLANs the machine has a network card on (nixpkgs' default: VLAN 1).
    public var vlans: [Int] = [1]
    /// Settings of the nspawn backend (set when `backend` is "nspawn").
    public var nspawn: NspawnSettings?
    /// Settings of the ssh backend (set when `backend` is "ssh").
    public var ssh: SSHSettings?

    /// A machine with the defaults (QEMU, minimal image, VLAN 1).
    public init(name: String) {
        self.name = name
    }

    static let backends = ["qemu", "nspawn", "ssh"]

    static func parse(name: String, _ json: JSONValue) throws -> MachineSpec {
        let path = "machines.\(name)"
        guard !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else {
            throw TestSpec.invalid("\(path): machine names may only contain letters, digits, '-' and '_'")
        }
        let o = try SpecObject(json, path: path)
        var m = MachineSpec(name: name)
        m.backend = try o.string("backend") ?? "qemu"
        guard backends.contains(m.backend) else {
            throw TestSpec.invalid("\(path).backend: unknown backend '\(m.backend)' (known: \(backends.joined(separator: ", ")))")
        }
        try o.allow(allowedKeys(backend: m.backend), backend: m.backend)
        m.image = try o.string("image")
        m.kernel = try o.string("kernel")
        m.initrd = try o.string("initrd")
        m.disk = try o.string("disk")
        m.cmdline = try o.string("cmdline")
        m.startScript = try o.string("startScript")
        m.memoryMiB = try o.int("memory") ?? 512
        m.cpus = try o.int("cpus") ?? 1
        m.qemuArgs = try o.strings("qemuArgs") ?? []
        m.bootTimeout = try o.number("bootTimeout") ?? 300
        if let vlans = o.value("vlans") {
            guard let list = vlans.arrayValue, list.allSatisfy({ $0.intValue != nil }) else {
                throw TestSpec.invalid("\(path).vlans must be an array of VLAN numbers")
            }
            m.vlans = list.compactMap(\.intValue)
            guard m.vlans.allSatisfy({ (1...255).contains($0) }) else {
                throw TestSpec.invalid("\(path).vlans: VLAN numbers must be within 1...255")
            }
        }
        if let b = try o.string("board") {
            guard let board = QEMUConfig.Board(rawValue: b) else {
                throw TestSpec.invalid("\(path).board: unknown board '\(b)' (microvm or pc)")
            }
            m.board = board
        }
        if let a = try o.string("accel") {
            guard let accel = Accelerator.Choice(rawValue: a) else {
                throw TestSpec.invalid("\(path).accel: unknown accelerator '\(a)' (auto, kvm or tcg)")
            }
            m.accelerator = accel
        }
        try m.parseBackendSettings(o)
        let sources = [m.image != nil, m.kernel != nil, m.startScript != nil].filter { $0 }.count
        if sources == 0, m.backend == "qemu" { m.image = "minimal" }
        guard sources <= 1 else {
            throw TestSpec.invalid("\(path): give only one of image, kernel or startScript")
        }
        guard m.memoryMiB >= 32 else { throw TestSpec.invalid("\(path).memory: at least 32 (MiB)") }
        guard m.cpus >= 1 else { throw TestSpec.invalid("\(path).cpus: at least 1") }
        guard m.bootTimeout > 0 else { throw TestSpec.invalid("\(path).bootTimeout must be positive") }
        return m
    }
}

/// A JSON object being validated, with its path for error messages.
struct SpecObject {
    let members: [String: JSONValue]
    let path: String

    init(_ json: JSONValue, path: String) throws {
        guard case .object(let members) = json else {
            throw TestSpec.invalid("\(path) must be a JSON object")
        }
        self.members = members
        self.path = path
    }

    func allow(_ keys: Set<String>, backend: String? = nil) throws {
        for key in members.keys.sorted() where !keys.contains(key) {
            if let backend, MachineSpec.backends.contains(where: { MachineSpec.allowedKeys(backend: $0).contains(key) }) {
                throw TestSpec.invalid("\(path).\(key): not used by the \(backend) backend")
            }
            let hint = keys.min { editDistance($0, key) < editDistance($1, key) }
                .flatMap { editDistance($0, key) <= 3 ? " (did you mean \($0)?)" : nil } ?? ""
            throw TestSpec.invalid("\(path).\(key): unknown key\(hint)")
        }
    }

    func value(_ key: String) -> JSONValue? { members[key] }

    func string(_ key: String) throws -> String? {
        guard let v = members[key], v != .null else { return nil }
        guard let s = v.stringValue else { throw TestSpec.invalid("\(path).\(key) must be a string") }
        return s
    }

    func number(_ key: String) throws -> Double? {
        guard let v = members[key], v != .null else { return nil }
        guard case .number(let n) = v else { throw TestSpec.invalid("\(path).\(key) must be a number") }
        return n
    }

    func int(_ key: String) throws -> Int? {
        guard let n = try number(key) else { return nil }
        guard let i = Int(exactly: n) else { throw TestSpec.invalid("\(path).\(key) must be a whole number") }
        return i
    }

    func strings(_ key: String) throws -> [String]? {
        guard let v = members[key], v != .null else { return nil }
        guard let a = v.arrayValue, a.allSatisfy({ $0.stringValue != nil }) else {
            throw TestSpec.invalid("\(path).\(key) must be an array of strings")
        }
        return a.compactMap(\.stringValue)
    }
}

func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a.lowercased()), b = Array(b.lowercased())
    var row = Array(0...b.count)
    for i in 1...max(a.count, 1) where !a.isEmpty {
        var prev = row[0]
        row[0] = i
        for j in stride(from: 1, through: b.count, by: 1) {
            let cur = row[j]
            row[j] = min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] == b[j - 1] ? 0 : 1))
            prev = cur
        }
    }
    return row[b.count]
}

func describe(_ error: any Error) -> String {
    if case DecodingError.dataCorrupted(let ctx) = error {
        return (ctx.underlyingError as NSError?)?.userInfo[NSDebugDescriptionErrorKey] as? String ?? ctx.debugDescription
    }
    return "\(error)"
}
