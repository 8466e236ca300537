import Foundation
import Glibc

/// A private network namespace with one bridge per VLAN and a TAP device per
/// machine and VLAN: the network that TAP-based backends (and QEMU, when a
/// test asks for `"network": "tap"`) attach to. Nothing is created in the
/// host's own namespace.
///
/// The namespace lives as long as a holder process (`unshare --net cat`)
/// reading a pipe only Vouch holds: when the run ends, or Vouch dies in any
/// way, the holder exits and the kernel removes the namespace with every
/// bridge and TAP in it once the last VM has gone. No named namespace is
/// left to clean up by hand.
final class NetworkNamespace: Sendable {
    private let holder: ChildProcess
    /// The holder's pid: `nsenter -t PID -n` runs a program inside.
    var pid: pid_t { holder.pid }

    /// Creates the namespace and its bridges (`br<vlan>` at 192.168.<vlan>.254/24).
    /// - Throws: `VouchError.unsupported` when not root, `.other` naming the failing `ip` command.
    static func create(vlans: [Int], log: TestLog) async throws -> NetworkNamespace {
        guard getuid() == 0 else {
            throw VouchError(.unsupported, "TAP networking needs root in this version (a user namespace variant is not built yet); use \"network\": \"vde\"")
        }
        let holder = try ChildProcess("unshare", ["--net", "--", "cat"], pipes: [.stdin, .stdout, .stderr])
        let ns = NetworkNamespace(holder: holder)
        do {
            try await ns.ip(["link", "set", "lo", "up"])
            for v in vlans {
                try await ns.ip(["link", "add", "br\(v)", "type", "bridge"])
                try await ns.ip(["addr", "add", "192.168.\(v).254/24", "dev", "br\(v)"])
                try await ns.ip(["addr", "add", "2001:db8:\(v)::254/64", "dev", "br\(v)", "nodad"])
                try await ns.ip(["link", "set", "br\(v)", "up"])
            }
        } catch {
            await ns.destroy()
            throw error
        }
        log.debug("network namespace of pid \(holder.pid): bridges \(vlans.map { "br\($0)" }.joined(separator: ", "))")
        return ns
    }

    private init(holder: ChildProcess) {
        self.holder = holder
    }

    /// The TAP name of `node` on `vlan` (at most 15 characters).
    static func tapName(node: Int, vlan: Int) -> String { "tap\(node)v\(vlan)" }

    /// Creates a TAP device attached to VLAN `vlan`'s bridge.
    /// - Throws: `VouchError.other` naming the failing command.
    func addTAP(_ name: String, vlan: Int) async throws {
        try await ip(["tuntap", "add", "dev", name, "mode", "tap"])
        try await ip(["link", "set", name, "master", "br\(vlan)"])
        try await ip(["link", "set", name, "up"])
    }

    /// The command prefix that runs a program inside the namespace.
    var enter: [String] { ["nsenter", "-t", "\(pid)", "-n", "--"] }

    /// Runs `ip ARGS` inside the namespace.
    /// - Throws: `VouchError.other` with ip's message.
    func ip(_ args: [String]) async throws {
        let (status, output) = try await ChildProcess.run("nsenter", ["-t", "\(pid)", "-n", "--", "ip"] + args)
        guard status == .exited(0) else {
            throw VouchError(.other, "ip \(args.joined(separator: " ")) failed in the test network namespace (\(status))",
                             outputTail: tail(output))
        }
    }

    /// Ends the holder; the namespace goes with the last process in it. Never throws.
    func destroy() async {
        await holder.terminate(grace: 1)
    }
}
