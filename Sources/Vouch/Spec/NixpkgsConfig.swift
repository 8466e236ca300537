import Foundation

/// nixpkgs' driver configuration (`--config FILE`): `vms` and `containers`
/// with start scripts, `vlans`, `global_timeout` and the Python `test_script`.
public struct NixpkgsConfig: Sendable {
    /// The machines and global timeout, as a Vouch spec.
    public var spec: TestSpec
    /// The Python test script, if the file carries one.
    public var testScript: String?
    /// The VLAN numbers the configuration lists.
    public var vlans: [Int]

    /// Reads a driverConfiguration JSON file.
    /// - Throws: `VouchError.invalidSpec` naming what is wrong.
    public static func load(_ url: URL) throws -> NixpkgsConfig {
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw VouchError(.invalidSpec, "cannot read driver configuration \(url.path)")
        }
        let json: JSONValue
        do { json = try JSONValue.parse(Array(data)) } catch {
            throw VouchError(.invalidSpec, "\(url.path) is not valid JSON: \(describe(error))")
        }
        do { return try parse(json) } catch let error as VouchError {
            throw VouchError(.invalidSpec, "\(url.path): \(error.message)")
        }
    }

    /// One `vms` or `containers` entry: its name and start script.
    private static func machine(_ key: String, _ value: JSONValue, path: String) throws -> MachineSpec {
        let node = try SpecObject(value, path: path)
        guard let script = try node.string("start_script") else {
            throw TestSpec.invalid("\(path).start_script is missing")
        }
        let name = try node.string("name") ?? key
        guard !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else {
            throw TestSpec.invalid("\(path).name: '\(name)' may only contain letters, digits, '-' and '_'")
        }
        var m = MachineSpec(name: name)
        m.startScript = script
        return m
    }

    /// Parses a driverConfiguration object.
    /// - Throws: `VouchError.invalidSpec`.
    public static func parse(_ json: JSONValue) throws -> NixpkgsConfig {
        let top = try SpecObject(json, path: "config")
        var machines: [MachineSpec] = []
        for (section, backend) in [("vms", "qemu"), ("containers", "nspawn")] {
            guard case .object(let nodes)? = top.value(section) else { continue }
            for (key, value) in nodes {
                var m = try machine(key, value, path: "config.\(section).\(key)")
                if backend == "nspawn" {
                    // The start script wires the container's network itself.
                    m.backend = "nspawn"
                    m.vlans = []
                    m.nspawn = NspawnSettings()
                } else {
                    m.board = .pc
                }
                if machines.contains(where: { $0.name == m.name }) {
                    throw TestSpec.invalid("config.\(section).\(key): there is already a machine named '\(m.name)'")
                }
                machines.append(m)
            }
        }
        guard !machines.isEmpty else { throw TestSpec.invalid("config.vms and config.containers are missing or empty") }
        let vlans = (top.value("vlans")?.arrayValue ?? []).compactMap(\.intValue)
        let timeout = try top.number("global_timeout") ?? 3600
        return NixpkgsConfig(
            spec: TestSpec(name: "nixos-test", globalTimeout: timeout, machines: machines),
            testScript: try top.string("test_script"), vlans: vlans)
    }
}
