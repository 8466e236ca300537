/// Settings of the `nspawn` backend (`"backend": "nspawn"`).
public struct NspawnSettings: Sendable, Equatable {
    /// A root filesystem directory to boot instead of an image's `rootfs`.
    public var rootDirectory: String?
    /// The unit whose activation means "booted" (default: the image's, else
    /// `default.target`).
    public var readyUnit: String?
    /// Extra `systemd-nspawn` arguments.
    public var extraArgs: [String] = []

    /// Defaults: the machine's image, its ready unit, no extra arguments.
    public init() {}
}

/// Settings of the `ssh` backend (`"backend": "ssh"`): an existing host.
public struct SSHSettings: Sendable, Equatable {
    /// How the host's key is checked.
    public enum KnownHosts: String, Sendable {
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
    /// The spec keys each backend reads; any other key is an error.
    static func allowedKeys(backend: String) -> Set<String> {
        let common: Set<String> = ["backend", "bootTimeout"]
        switch backend {
        case "nspawn":
            return common.union(["image", "rootDirectory", "startScript", "readyUnit", "nspawnArgs", "vlans"])
        case "ssh":
            return common.union(["host", "port", "user", "identityFile", "knownHosts", "knownHostsFile",
                                 "allowPowerControl", "sshArgs"])
        default:
            return common.union(["image", "kernel", "initrd", "disk", "cmdline", "startScript", "memory", "cpus",
                                 "qemuArgs", "board", "accel", "vlans"])
        }
    }

    /// Reads the settings only the nspawn and ssh backends have.
    /// - Throws: `VouchError.invalidSpec` naming the machine and key.
    mutating func parseBackendSettings(_ o: SpecObject) throws {
        let path = o.path
        switch backend {
        case "nspawn":
            var n = NspawnSettings()
            n.rootDirectory = try o.string("rootDirectory")
            n.readyUnit = try o.string("readyUnit")
            n.extraArgs = try o.strings("nspawnArgs") ?? []
            if [n.rootDirectory != nil, image != nil, startScript != nil].filter({ $0 }).count > 1 {
                throw TestSpec.invalid("\(path): give only one of image, rootDirectory or startScript")
            }
            if !n.extraArgs.isEmpty, startScript != nil {
                throw TestSpec.invalid("\(path).nspawnArgs: a start script runs systemd-nspawn itself")
            }
            if n.rootDirectory == nil, startScript == nil, image == nil { image = "systemd" }
            if startScript != nil {
                // The script wires the container's network itself (nixpkgs' contract).
                if o.value("vlans") != nil, !vlans.isEmpty {
                    throw TestSpec.invalid("\(path).vlans: a start script sets up its own network; use \"vlans\": []")
                }
                vlans = []
            }
            nspawn = n
        case "ssh":
            guard let host = try o.string("host"), !host.isEmpty else {
                throw TestSpec.invalid("\(path).host: the ssh backend needs the host to connect to")
            }
            var s = SSHSettings(host: host)
            s.port = try o.int("port")
            if let port = s.port, !(1...65535).contains(port) {
                throw TestSpec.invalid("\(path).port: \(port) is not a TCP port")
            }
            s.user = try o.string("user")
            s.identityFile = try o.string("identityFile")
            if let policy = try o.string("knownHosts") {
                guard let known = SSHSettings.KnownHosts(rawValue: policy) else {
                    throw TestSpec.invalid("\(path).knownHosts: unknown policy '\(policy)' (strict, accept-new or off)")
                }
                s.knownHosts = known
            }
            s.knownHostsFile = try o.string("knownHostsFile")
            if let allow = o.value("allowPowerControl") {
                guard case .bool(let b) = allow else { throw TestSpec.invalid("\(path).allowPowerControl must be true or false") }
                s.allowPowerControl = b
            }
            s.extraArgs = try o.strings("sshArgs") ?? []
            // An existing host is not on the test's VLANs.
            vlans = []
            ssh = s
        default:
            break
        }
    }
}
