import Foundation
import Glibc
import VouchSupport

/// A private network namespace with one bridge per VLAN and a TAP device per
/// machine and VLAN: the network that TAP-based backends (and QEMU, when a
/// test asks for `"network": "tap"`) attach to. Nothing is created in the
/// host's own namespace.
///
/// As root the holder is `unshare --net cat`; otherwise (or when asked) it
/// is `unshare --user --map-root-user --net cat`, a user namespace in which
/// Vouch may create bridges and TAPs without privileges on the host.
///
/// The namespace lives as long as a holder process
/// reading a pipe only Vouch holds: when the run ends, or Vouch dies in any
/// way, the holder exits and the kernel removes the namespace with every
/// bridge and TAP in it once the last VM has gone. No named namespace is
/// left to clean up by hand.
package final class NetworkNamespace: Sendable {
    private let holder: ChildProcess
    /// Whether the namespace sits in its own user namespace (rootless).
    package let userNamespace: Bool
    /// The holder's pid: `nsenter -t PID ...` runs a program inside.
    package var pid: pid_t { holder.pid }

    /// Creates the namespace and its bridges (`br<vlan>` at 192.168.<vlan>.254/24).
    /// - Parameter userNamespace: nil chooses by privilege (root: no).
    /// - Throws: `VouchError.unsupported` if the kernel refuses the namespaces,
    ///   `.other` naming the failing `ip` command.
    package static func create(vlans: [Int], userNamespace: Bool? = nil, log: TestLog) async throws(VouchError) -> NetworkNamespace {
        let rootless = userNamespace ?? (getuid() != 0)
        let holder = try ChildProcess(
            "unshare", (rootless ? ["--user", "--map-root-user"] : []) + ["--net", "--", "cat"], pipes: [.stdin, .stdout, .stderr])
        let ns = NetworkNamespace(holder: holder, userNamespace: rootless)
        // Ready once unshare has set everything up and exec'd `cat`; before
        // that the holder is still in our namespaces (and nsenter into one's
        // own user namespace fails). unshare exits at once if the kernel refuses.
        let deadline = Deadline(seconds: 10)
        while holder.exitStatus == nil, !deadline.hasPassed,
              (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(holder.pid)/exe"))?.hasSuffix("/cat") != true {
            do { try await delay(0.005) } catch {
                await holder.terminate(grace: 1)
                throw error
            }
        }
        if let status = holder.exitStatus {
            let out = OutputCollector()
            if let reader = holder.stderr { _ = try? await withDeadline(seconds: 2) { await out.drain(reader.queue) } }
            let why = out.text
            throw VouchError(.unsupported, "cannot create the test network namespace (unshare \(status)): \(why.trimmingTrailingNewlines())"
                + (rootless ? "; unprivileged user namespaces may be disabled on this host" : ""))
        }
        do throws(VouchError) {
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

    private init(holder: ChildProcess, userNamespace: Bool) {
        self.holder = holder
        self.userNamespace = userNamespace
    }

    /// The TAP name of `node` on `vlan` (at most 15 characters).
    package static func tapName(node: Int, vlan: Int) -> String { "tap\(node)v\(vlan)" }

    /// Creates a TAP device attached to VLAN `vlan`'s bridge.
    /// - Throws: `VouchError.other` naming the failing command.
    package func addTAP(_ name: String, vlan: Int) async throws(VouchError) {
        try await ip(["tuntap", "add", "dev", name, "mode", "tap"])
        try await ip(["link", "set", name, "master", "br\(vlan)"])
        try await ip(["link", "set", name, "up"])
    }

    /// `nsenter` arguments that run a program inside the namespace.
    package var enterArguments: [String] {
        ["-t", "\(pid)"] + (userNamespace ? ["-U", "--preserve-credentials"] : []) + ["-n", "--"]
    }

    /// Runs `ip ARGS` inside the namespace.
    /// - Throws: `VouchError.other` with ip's message.
    package func ip(_ args: [String]) async throws(VouchError) {
        let (status, output) = try await ChildProcess.run("nsenter", enterArguments + ["ip"] + args, timeout: 10)
        guard status == .exited(0) else {
            throw VouchError(.other, "ip \(args.joined(separator: " ")) failed in the test network namespace (\(status))",
                             outputTail: tail(output))
        }
    }

    /// Ends the holder; the namespace goes with the last process in it. Never throws.
    package func destroy() async {
        await holder.terminate(grace: 1)
    }
}
