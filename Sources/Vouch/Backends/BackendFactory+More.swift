import Foundation

extension BackendFactory {
    /// A container of the image's unpacked root filesystem (or a given
    /// directory), or one a nixpkgs `run-NAME-nspawn` start script boots.
    /// - Throws: `VouchError.missingImage` if the image has no root directory.
    static func nspawnPlan(for spec: MachineSpec) throws -> Plan {
        let settings = spec.nspawn ?? NspawnSettings()
        if let script = spec.startScript {
            guard FileManager.default.isExecutableFile(atPath: script) else {
                throw VouchError(.missingImage, "start script \(script) does not exist or is not executable", machine: spec.name)
            }
            // NixOS's default target; its state is what "booted" means to the shell.
            let unit = settings.readyUnit ?? "multi-user.target"
            let timeout = spec.bootTimeout
            return Plan(make: { NspawnBackend(context: $0, source: .startScript(script), readyUnit: unit, extraArgs: [],
                                              bootTimeout: timeout) },
                        readyUnit: unit)
        }
        var readyUnit = settings.readyUnit
        let root: String
        if let directory = settings.rootDirectory {
            root = directory
        } else {
            let reference = spec.image ?? "systemd"
            let image: GuestImage
            do { image = try GuestImage.resolve(reference) } catch var error as VouchError {
                error.machine = spec.name
                throw error
            }
            guard let directory = image.rootDirectory else {
                throw VouchError(.missingImage, "image '\(reference)' has no unpacked root filesystem for containers"
                                 + " (image.json: rootDirectory); the systemd image has one once rebuilt with `vouch images build systemd`",
                                 machine: spec.name)
            }
            root = directory.path
            readyUnit = readyUnit ?? image.readyUnit
        }
        let unit = readyUnit ?? "default.target"
        let extra = settings.extraArgs
        return Plan(make: { NspawnBackend(context: $0, source: .root(root), readyUnit: unit, extraArgs: extra,
                                                      bootTimeout: spec.bootTimeout) },
                    readyUnit: unit)
    }

    /// An existing host over OpenSSH.
    /// - Throws: `VouchError.invalidSpec` without a host.
    static func sshPlan(for spec: MachineSpec) throws -> Plan {
        guard let settings = spec.ssh else {
            throw VouchError(.invalidSpec, "the ssh backend needs a host", machine: spec.name)
        }
        if let identity = settings.identityFile, !FileManager.default.fileExists(atPath: identity) {
            throw VouchError(.missingImage, "identity file \(identity) does not exist", machine: spec.name)
        }
        return Plan(make: { SSHBackend(context: $0, settings: settings) }, readyUnit: nil)
    }
}
