import Foundation

/// nixpkgs' driver configuration (`--config FILE`): `vms` with start
/// scripts, `vlans`, `global_timeout` and the Python `test_script`.
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

    /// Parses a driverConfiguration object.
    /// - Throws: `VouchError.invalidSpec`.
    public static func parse(_ json: JSONValue) throws -> NixpkgsConfig {
        let top = try SpecObject(json, path: "config")
        var machines: [MachineSpec] = []
        if case .object(let vms)? = top.value("vms") {
            for (key, value) in vms {
                let vm = try SpecObject(value, path: "config.vms.\(key)")
                guard let script = try vm.string("start_script") else {
                    throw TestSpec.invalid("config.vms.\(key).start_script is missing")
                }
                let name = try vm.string("name") ?? key
                guard !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else {
                    throw TestSpec.invalid("config.vms.\(key).name: '\(name)' may only contain letters, digits, '-' and '_'")
                }
                var m = MachineSpec(name: name)
                m.startScript = script
                m.board = .pc
                machines.append(m)
            }
        }
        if case .object(let containers)? = top.value("containers"), !containers.isEmpty {
            throw VouchError(.unsupported, "config.containers: nixpkgs containers are not supported by Vouch yet")
        }
        guard !machines.isEmpty else { throw TestSpec.invalid("config.vms is missing or empty") }
        let vlans = (top.value("vlans")?.arrayValue ?? []).compactMap(\.intValue)
        let timeout = try top.number("global_timeout") ?? 3600
        return NixpkgsConfig(
            spec: TestSpec(name: "nixos-test", globalTimeout: timeout, machines: machines),
            testScript: try top.string("test_script"), vlans: vlans)
    }
}
