import Foundation
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// A real sshd on this host, alone in a network namespace reached through a
/// veth pair: a throwaway "existing host" for the ssh backend. Keys, config
/// and known_hosts live in a private temp directory; `stop()` ends sshd and
/// the namespace holder (the kernel then removes the veth pair).
final class SSHDFixture: Sendable {
    let directory: String
    let address: String
    let holder: ChildProcess
    let sshd: ChildProcess
    let hostVeth: String

    /// - Throws: when a setup command fails (the message quotes it).
    static func start() async throws -> SSHDFixture {
        let directory = NSTemporaryDirectory() + "vouch-sshd-\(getpid())-\(UInt16.random(in: 0...UInt16.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        try FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true)
        let subnet = Int.random(in: 1...250)
        let host = "10.233.\(subnet).1", address = "10.233.\(subnet).2"
        try await sh("ssh-keygen -q -t ed25519 -N '' -f \(directory)/hostkey && ssh-keygen -q -t ed25519 -N '' -f \(directory)/id"
                     + " && cp \(directory)/id.pub \(directory)/authorized_keys"
                     + " && echo \"\(address) $(cut -d' ' -f1,2 \(directory)/hostkey.pub)\" > \(directory)/known_hosts")
        try """
            ListenAddress \(address)
            HostKey \(directory)/hostkey
            AuthorizedKeysFile \(directory)/authorized_keys
            StrictModes no
            PermitRootLogin prohibit-password
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            UsePAM no
            PidFile none

            """.write(toFile: directory + "/sshd_config", atomically: true, encoding: .utf8)
        let holder = try ChildProcess("unshare", ["--net", "--", "cat"], pipes: [.stdin, .stdout, .stderr])
        for _ in 0..<200 where (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(holder.pid)/exe"))?.hasSuffix("/cat") != true {
            try await Task.sleep(for: .milliseconds(10))
        }
        let veth = "vsshd\(subnet)"
        try await sh("ip link add \(veth) type veth peer name eth0 netns \(holder.pid) && ip addr add \(host)/30 dev \(veth)"
                     + " && ip link set \(veth) up && nsenter -t \(holder.pid) -n sh -c 'ip link set lo up &&"
                     + " ip addr add \(address)/30 dev eth0 && ip link set eth0 up'")
        let sshd = try ChildProcess("nsenter", ["-t", "\(holder.pid)", "-n", "/usr/sbin/sshd", "-D", "-e", "-f", directory + "/sshd_config"])
        let fixture = SSHDFixture(directory: directory, address: address, holder: holder, sshd: sshd, hostVeth: veth)
        for _ in 0..<100 {
            if (try? await sh("nsenter -t \(holder.pid) -n bash -c 'exec 3<>/dev/tcp/\(address)/22'")) != nil { return fixture }
            try await Task.sleep(for: .milliseconds(50))
        }
        await fixture.stop()
        throw VouchError(.other, "sshd in the test namespace did not start listening")
    }

    private init(directory: String, address: String, holder: ChildProcess, sshd: ChildProcess, hostVeth: String) {
        self.directory = directory
        self.address = address
        self.holder = holder
        self.sshd = sshd
        self.hostVeth = hostVeth
    }

    /// A machine spec for this sshd, strict host key checking against its known_hosts.
    func machine(_ name: String) -> MachineSpec {
        var s = SSHSettings(host: address)
        s.user = "root"
        s.identityFile = directory + "/id"
        s.knownHostsFile = directory + "/known_hosts"
        return MachineSpec(name: name, ssh: s)
    }

    func stop() async {
        _ = await sshd.terminate(grace: 1)
        _ = await holder.terminate(grace: 1)
        try? FileManager.default.removeItem(atPath: directory)
    }

    @discardableResult
    static func sh(_ script: String) async throws -> String {
        let (status, output) = try await ChildProcess.run("bash", ["-c", script])
        guard status == .exited(0) else { throw VouchError(.other, "\(script): \(status)", outputTail: output) }
        return output
    }
}
