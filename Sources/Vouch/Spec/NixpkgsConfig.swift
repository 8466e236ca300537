import Foundation
import VouchBackends
import VouchSupport

/// nixpkgs' driver configuration (`--config FILE`): `vms` and `containers`
/// with start scripts, `vlans`, `global_timeout` and the Python `test_script`.
/// Each section goes to the backend that says it runs it (`BackendRegistry`).
public struct NixpkgsConfig: Sendable {
    /// The machines and global timeout, as a Vouch spec.
    public var spec: TestSpec
    /// The Python test script, if the file carries one.
    public var testScript: String?
    /// The VLAN numbers the configuration lists.
    public var vlans: [Int]

    /// Reads a driverConfiguration JSON file.
    /// - Throws: `.invalidSpec` naming what is wrong.
    public static func load(_ url: URL) throws(VouchError) -> NixpkgsConfig {
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw VouchError(.invalidSpec, "cannot read driver configuration \(url.path)", cause: SystemCallError("open \(url.path)"))
        }
        let json: JSONValue
        do { json = try JSONValue.parse(Array(data)) } catch {
            throw VouchError(.invalidSpec, "\(url.path) is not valid JSON: \(error.message.replacingOccurrences(of: "malformed JSON: ", with: ""))")
        }
        do { return try parse(json) } catch {
            throw VouchError(.invalidSpec, "\(url.path): \(error.message)")
        }
    }

    /// Parses a driverConfiguration object.
    /// - Throws: `.invalidSpec`.
    public static func parse(_ json: JSONValue) throws(VouchError) -> NixpkgsConfig {
        let top = try SpecObject(json, path: "config")
        var machines: [MachineSpec] = []
        for section in BackendRegistry.nixpkgsSections {
            guard case .object(let nodes)? = top.value(section), let provider = BackendRegistry.provider(forNixpkgsSection: section) else { continue }
            for (key, value) in nodes.sorted(by: { $0.key < $1.key }) {
                let path = "config.\(section).\(key)"
                let node = try SpecObject(value, path: path)
                guard let script = try node.string("start_script") else { throw SpecObject.invalid("\(path).start_script is missing") }
                let name = try node.string("name") ?? key
                try NodeNames.check(name, at: "\(path).name")
                guard let machine = provider.machine(name: name, startScript: script) else { continue }
                if machines.contains(where: { $0.name == machine.name }) {
                    throw SpecObject.invalid("\(path): there is already a machine named '\(machine.name)'")
                }
                machines.append(machine)
            }
        }
        // Empty sections are a test without nodes (valid in nixpkgs); no section at all is not a driver configuration.
        guard BackendRegistry.nixpkgsSections.contains(where: { top.value($0) != nil }) else {
            throw SpecObject.invalid(BackendRegistry.nixpkgsSections.map { "config.\($0)" }.joined(separator: " and ") + " are missing")
        }
        let vlans = (top.value("vlans")?.arrayValue ?? []).compactMap(\.intValue)
        let timeout = try top.number("global_timeout") ?? 3600
        let spec = TestSpec(name: "nixos-test", globalTimeout: timeout, machines: machines)
        try spec.validate()
        return NixpkgsConfig(spec: spec, testScript: try top.string("test_script"), vlans: vlans)
    }
}
