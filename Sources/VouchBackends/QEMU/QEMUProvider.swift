import Foundation
import VouchSupport

/// Settings of the `qemu` backend (the default).
public struct QEMUSettings: BackendSettings, Equatable {
    public static let backend = "qemu"

    /// A built-in image name or an image directory (default `minimal`
    /// when no kernel or start script is given).
    public var image: String?
    /// A kernel to boot directly instead of an image.
    public var kernel: String?
    /// The initrd for `kernel`.
    public var initrd: String?
    /// A root disk for `kernel`, used copy-on-write.
    public var disk: String?
    /// Kernel parameters (added to an image's own).
    public var cmdline: String?
    /// A nixpkgs `run-NAME-vm` start script.
    public var startScript: String?
    /// Guest memory in MiB.
    public var memoryMiB = 512
    /// Virtual CPUs.
    public var cpus = 1
    /// Extra QEMU arguments.
    public var qemuArgs: [String] = []
    /// The QEMU machine type, or nil for the default (`microvm`; `pc` for start scripts).
    public var board: QEMUConfig.Board?
    /// KVM, TCG, or probe (`auto`).
    public var accelerator: Accelerator.Choice = .auto
    /// A VGA display and a USB tablet (implies the `pc` board).
    public var graphics = false

    /// The built-in `image` (default `minimal`).
    public init(image: String? = nil) {
        self.image = image
    }
}

extension MachineSpec {
    /// A QEMU machine.
    public init(name: String, qemu: QEMUSettings) {
        self.init(name: name, settings: qemu)
    }

    /// The QEMU settings, if this is a QEMU machine.
    public var qemu: QEMUSettings? {
        get { settings as? QEMUSettings }
        set { if let newValue { settings = newValue } }
    }
}

/// The `qemu` backend: a VM per machine, booted directly from a Vouch image
/// or a kernel, or by a nixpkgs start script.
package struct QEMUProvider: BackendProvider {
    package let name = QEMUSettings.backend

    package let keys: Set<String> = [
        "image", "kernel", "initrd", "disk", "cmdline", "startScript", "memory", "cpus", "qemuArgs", "board", "accel",
        "graphics",
    ]

    package init() {}

    package func parse(_ o: SpecObject, into machine: inout MachineSpec) throws(VouchError) {
        var q = QEMUSettings()
        q.image = try o.string("image")
        q.kernel = try o.string("kernel")
        q.initrd = try o.string("initrd")
        q.disk = try o.string("disk")
        q.cmdline = try o.string("cmdline")
        q.startScript = try o.string("startScript")
        q.memoryMiB = try o.int("memory") ?? 512
        q.cpus = try o.int("cpus") ?? 1
        q.qemuArgs = try o.strings("qemuArgs") ?? []
        q.board = try o.choice("board", QEMUConfig.Board.self)
        q.accelerator = try o.choice("accel", Accelerator.Choice.self) ?? .auto
        q.graphics = try o.bool("graphics") ?? false
        let sources = [q.image != nil, q.kernel != nil, q.startScript != nil].filter { $0 }.count
        guard sources <= 1 else { throw SpecObject.invalid("\(o.path): give only one of image, kernel or startScript") }
        if sources == 0 { q.image = "minimal" }
        if q.kernel == nil, q.initrd != nil || q.disk != nil {
            throw SpecObject.invalid("\(o.path): initrd and disk go with kernel")
        }
        if q.graphics, q.startScript != nil {
            throw SpecObject.invalid("\(o.path).graphics: a start script brings its own display (virtualisation.graphics in its NixOS config)")
        }
        if q.graphics, q.board == .microvm {
            throw SpecObject.invalid("\(o.path).graphics: the microvm board has no PCI bus for a VGA card; use board pc (the default with graphics)")
        }
        guard q.memoryMiB >= 32 else { throw SpecObject.invalid("\(o.path).memory: at least 32 (MiB)") }
        guard q.cpus >= 1 else { throw SpecObject.invalid("\(o.path).cpus: at least 1") }
        machine.settings = q
    }

    package func prepare(_ machine: MachineSpec, in run: RunEnvironment) throws(VouchError) -> BackendPlan {
        guard let spec = machine.qemu else { throw VouchError(.invalidSpec, "not a QEMU machine", machine: machine.name) }
        var config: QEMUConfig
        var hostnameParameter = "vouch.hostname"
        var readyUnit: String?
        var probeKernel: String?
        if let script = spec.startScript {
            guard FileManager.default.isExecutableFile(atPath: script) else {
                throw VouchError(.missingImage, "start script \(script) does not exist or is not executable", machine: machine.name)
            }
            config = QEMUConfig(boot: .startScript(script))
            config.board = .pc
            probeKernel = (try? GuestImage.resolve("minimal"))?.kernel.path
        } else if let kernel = spec.kernel {
            for (what, path) in [("kernel", kernel), ("initrd", spec.initrd), ("disk", spec.disk)] {
                if let path, !FileManager.default.fileExists(atPath: path) {
                    throw VouchError(.missingImage, "\(what) \(path) does not exist", machine: machine.name)
                }
            }
            config = QEMUConfig(boot: .direct(kernel: kernel, initrd: spec.initrd, rootDisk: spec.disk,
                                              cmdline: spec.cmdline ?? "console=ttyS0"))
            probeKernel = kernel
        } else {
            let image: GuestImage
            do { image = try GuestImage.resolve(spec.image ?? "minimal") } catch { throw error.on(machine.name) }
            config = QEMUConfig(boot: .direct(kernel: image.kernel.path, initrd: image.initrd?.path,
                                              rootDisk: image.rootDisk?.path, cmdline: image.cmdline))
            config.extraCmdline = spec.cmdline ?? ""
            hostnameParameter = image.hostnameParameter
            readyUnit = image.readyUnit
            probeKernel = image.kernel.path
        }
        guard ChildProcess.resolve(config.qemuBinary) != nil else {
            throw VouchError(.unsupported, "\(config.qemuBinary) is not installed: apt-get install qemu-system-x86 (scripts/setup does)",
                             machine: machine.name)
        }
        if let board = spec.board { config.board = board }
        if spec.graphics {
            config.graphics = true
            config.board = .pc
        }
        config.memoryMiB = spec.memoryMiB
        config.cpus = spec.cpus
        config.extraArgs = spec.qemuArgs
        config.accelerator = run.accelerator ?? spec.accelerator
        let finalConfig = config, parameter = hostnameParameter, kernel = probeKernel
        return BackendPlan(readyUnit: readyUnit) { context in
            QEMUBackend(context: context, config: finalConfig, hostnameParameter: parameter, probeKernel: kernel)
        }
    }

    package let nixpkgsSection: String? = "vms"

    package func machine(name: String, startScript: String) -> MachineSpec? {
        var q = QEMUSettings()
        q.startScript = startScript
        q.board = .pc
        return MachineSpec(name: name, qemu: q)
    }

    package func benchmarkPlan(image: String, workDirectory: String) throws(VouchError) -> BenchmarkPlan {
        var machine = MachineSpec(name: "bench", qemu: QEMUSettings(image: image))
        machine.vlans = []
        return BenchmarkPlan(machines: [machine], measured: "bench", runsOn: "QEMU (KVM where it works, else TCG)")
    }
}
