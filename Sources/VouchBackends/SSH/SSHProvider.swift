import Foundation
import VouchSupport

/// Settings of the `ssh` backend (`"backend": "ssh"`): an existing host.
public struct SSHSettings: BackendSettings, Equatable {
    public static let backend = "ssh"

    /// How the host's key is checked.
    public enum KnownHosts: String, Sendable, CaseIterable {
        /// The key must already be known (ssh's `StrictHostKeyChecking=yes`).
        case strict
        /// Unknown keys are added; changed keys are refused.
        case acceptNew = "accept-new"
        /// No checking at all: only for throwaway hosts.
        case off
    }

    /// Host name or address (or a `Host` alias from the user's ssh config).
    public var host: String
    /// TCP port; nil leaves it to ssh (config, else 22).
    public var port: Int?
    /// Login user; nil leaves it to ssh (config, else the local user).
    public var user: String?
    /// Private key to offer (only this one: `IdentitiesOnly=yes`); nil uses the agent and ssh config.
    public var identityFile: String?
    /// Host key policy; strict unless the test opts out.
    public var knownHosts: KnownHosts = .strict
    /// A known_hosts file to use instead of the user's.
    public var knownHostsFile: String?
    /// Whether `shutdown()` and `reboot()` may power the host off.
    public var allowPowerControl = false
    /// Extra ssh arguments (e.g. `["-o", "ProxyJump=gw"]`).
    public var extraArgs: [String] = []

    /// Settings for `host` with ssh's defaults and strict host key checking.
    public init(host: String) {
        self.host = host
    }
}

extension MachineSpec {
    /// An existing host over SSH (on no VLAN).
    public init(name: String, ssh: SSHSettings) {
        self.init(name: name, settings: ssh)
        vlans = []
    }

    /// The ssh settings, if this is an existing host.
    public var ssh: SSHSettings? {
        get { settings as? SSHSettings }
        set { if let newValue { settings = newValue } }
    }
}

/// The `ssh` backend: an existing host, driven over OpenSSH.
package struct SSHProvider: BackendProvider {
    package let name = SSHSettings.backend

    package let keys: Set<String> = [
        "host", "port", "user", "identityFile", "knownHosts", "knownHostsFile", "allowPowerControl", "sshArgs",
    ]

    package init() {}

    package func parse(_ o: SpecObject, into machine: inout MachineSpec) throws(VouchError) {
        guard let host = try o.string("host"), !host.isEmpty else {
            throw SpecObject.invalid("\(o.path).host: the ssh backend needs the host to connect to")
        }
        var s = SSHSettings(host: host)
        s.port = try o.int("port")
        if let port = s.port, !(1...65535).contains(port) {
            throw SpecObject.invalid("\(o.path).port: \(port) is not a TCP port")
        }
        s.user = try o.string("user")
        s.identityFile = try o.string("identityFile")
        s.knownHosts = try o.choice("knownHosts", SSHSettings.KnownHosts.self) ?? .strict
        s.knownHostsFile = try o.string("knownHostsFile")
        s.allowPowerControl = try o.bool("allowPowerControl") ?? false
        s.extraArgs = try o.strings("sshArgs") ?? []
        if let vlans = o.value("vlans"), vlans != .array([]) {
            throw SpecObject.invalid("\(o.path).vlans: an existing host is on no test VLAN (leave vlans out)")
        }
        machine.vlans = []
        machine.settings = s
    }

    package func prepare(_ machine: MachineSpec, in run: RunEnvironment) throws(VouchError) -> BackendPlan {
        guard let settings = machine.ssh else { throw VouchError(.invalidSpec, "not an ssh machine", machine: machine.name) }
        if let identity = settings.identityFile, !FileManager.default.fileExists(atPath: identity) {
            throw VouchError(.missingImage, "identity file \(identity) does not exist", machine: machine.name)
        }
        guard ChildProcess.resolve("ssh") != nil else {
            throw VouchError(.unsupported, "the ssh client is not installed: apt-get install openssh-client", machine: machine.name)
        }
        return BackendPlan(readyUnit: nil) { SSHBackend(context: $0, settings: settings) }
    }

    package func whyMissing(_ capability: Capability) -> String? {
        switch capability {
        case .crash: "Vouch cannot pull the plug of an existing host"
        case .links: "the host is not on a test VLAN"
        case .keys: "there is no keyboard"
        case .screen: "Vouch sees no display of an existing host"
        case .consoleInput: "Vouch has no serial console of an existing host"
        case .monitor: "an existing host has no QEMU monitor"
        case .snapshots: "an existing host cannot be snapshotted"
        default: nil
        }
    }

    /// An nspawn container running sshd stands in for the remote host,
    /// reached through a forwarded loopback port: no host outside the run.
    package func benchmarkPlan(image: String, workDirectory: String) throws(VouchError) -> BenchmarkPlan {
        let key = workDirectory + "/id"
        let (status, output) = try runSync("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", key])
        guard status == 0 else { throw VouchError(.spawnFailed, "ssh-keygen failed", outputTail: tail(output)) }
        let publicKey: String
        do { publicKey = try String(contentsOfFile: key + ".pub", encoding: .utf8) } catch {
            throw VouchError.from(error, "cannot read \(key).pub")
        }
        let port: Int
        do { port = try LoopbackTCP.freePort() } catch { throw VouchError(.other, "no free loopback port", cause: error) }
        var hostSettings = NspawnSettings()
        hostSettings.image = image
        var host = MachineSpec(name: "sshd", nspawn: hostSettings)
        host.vlans = []
        var s = SSHSettings(host: "127.0.0.1")
        s.port = port
        s.user = "root"
        s.identityFile = key
        s.knownHosts = .off
        return BenchmarkPlan(
            machines: [host, MachineSpec(name: "bench", ssh: s)], measured: "bench",
            steps: [
                .succeed(machine: "sshd", command: "mkdir -p -m 700 /root/.ssh && echo \(shellQuote(publicKey)) > /root/.ssh/authorized_keys"),
                .waitForUnit(machine: "sshd", unit: "ssh.service"),
                .forwardPort(machine: "sshd", host: port, guest: 22),
            ], runsOn: "ssh into an nspawn container's sshd")
    }

    private func runSync(_ path: String, _ args: [String]) throws(VouchError) -> (Int32, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = args
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        do { try process.run() } catch { throw VouchError.spawnFailed(program: path, reason: "\(error)", cause: SendableError(error)) }
        process.waitUntilExit()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
