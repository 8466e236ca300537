import Foundation

/// Turns a `MachineSpec` into a backend maker, checking everything that can be
/// checked before anything starts (images exist, backend is known).
enum BackendFactory {
    struct Plan: Sendable {
        let make: @Sendable (MachineContext) throws -> any Backend
        let readyUnit: String?
    }

    /// - Throws: `VouchError.missingImage` / `.invalidSpec` naming the machine.
    static func plan(for spec: MachineSpec, accelerator: Accelerator.Choice?) throws -> Plan {
        switch spec.backend {
        case "qemu":
            var config: QEMUConfig
            var hostnameParameter = "vouch.hostname"
            var readyUnit: String?
            var probeKernel: String?
            if let script = spec.startScript {
                guard FileManager.default.isExecutableFile(atPath: script) else {
                    throw VouchError(.missingImage, "start script \(script) does not exist or is not executable", machine: spec.name)
                }
                config = QEMUConfig(boot: .startScript(script))
                config.board = .pc
                probeKernel = (try? GuestImage.resolve("minimal"))?.kernel.path
            } else if let kernel = spec.kernel {
                for (what, path) in [("kernel", kernel), ("initrd", spec.initrd), ("disk", spec.disk)] {
                    if let path, !FileManager.default.fileExists(atPath: path) {
                        throw VouchError(.missingImage, "\(what) \(path) does not exist", machine: spec.name)
                    }
                }
                config = QEMUConfig(boot: .direct(kernel: kernel, initrd: spec.initrd, rootDisk: spec.disk,
                                                  cmdline: spec.cmdline ?? "console=ttyS0"))
                probeKernel = kernel
            } else {
                let image: GuestImage
                do { image = try GuestImage.resolve(spec.image ?? "minimal") } catch var error as VouchError {
                    error.machine = spec.name
                    throw error
                }
                config = QEMUConfig(boot: .direct(kernel: image.kernel.path, initrd: image.initrd?.path,
                                                  rootDisk: image.rootDisk?.path, cmdline: image.cmdline))
                config.extraCmdline = spec.cmdline ?? ""
                hostnameParameter = image.hostnameParameter
                readyUnit = image.readyUnit
                probeKernel = image.kernel.path
            }
            if let board = spec.board { config.board = board }
            config.memoryMiB = spec.memoryMiB
            config.cpus = spec.cpus
            config.extraArgs = spec.qemuArgs
            config.accelerator = accelerator ?? spec.accelerator
            let finalConfig = config
            let param = hostnameParameter
            let kernel = probeKernel
            return Plan(
                make: { QEMUBackend(context: $0, config: finalConfig, hostnameParameter: param, probeKernel: kernel) },
                readyUnit: readyUnit)
        case "nspawn":
            return try nspawnPlan(for: spec)
        case "ssh":
            return try sshPlan(for: spec)
        default:
            throw VouchError(.invalidSpec, "unknown backend '\(spec.backend)'", machine: spec.name)
        }
    }
}
