import Foundation
import VouchSupport

/// Settings of the `firecracker` backend.
public struct FirecrackerSettings: MicroVMSettings, Equatable {
    public static let backend = "firecracker"

    /// A built-in image name or an image directory (default `minimal`).
    public var image: String?
    /// A kernel (uncompressed vmlinux) to boot instead of an image.
    public var kernel: String?
    /// The initrd for `kernel`.
    public var initrd: String?
    /// A raw root disk for `kernel` (copied per machine).
    public var disk: String?
    /// Kernel parameters (added to an image's own).
    public var cmdline: String?
    /// Guest memory in MiB.
    public var memoryMiB = 512
    /// Virtual CPUs.
    public var cpus = 1
    /// The firecracker executable (default: `$VOUCH_FIRECRACKER`, else `firecracker` on PATH).
    public var binary: String?

    /// The built-in `image` (default `minimal`).
    public init(image: String? = nil) {
        self.image = image
    }

    public init() {}
}

extension MachineSpec {
    /// A firecracker machine.
    public init(name: String, firecracker: FirecrackerSettings) {
        self.init(name: name, settings: firecracker)
    }

    /// The firecracker settings, if this is a firecracker machine.
    public var firecracker: FirecrackerSettings? { settings as? FirecrackerSettings }
}

/// The `firecracker` backend: a Firecracker microVM per machine, configured
/// over its API socket, with the backdoor on vsock.
package struct FirecrackerProvider: BackendProvider {
    package let name = FirecrackerSettings.backend
    package let keys = MicroVMGuest.specKeys

    package init() {}

    package func parse(_ o: SpecObject, into machine: inout MachineSpec) throws(VouchError) {
        // Firecracker's limit (machine-config vcpu_count: 1 to 32).
        machine.settings = try FirecrackerSettings.parse(o, maxCPUs: 32)
    }

    package func validate(_ machine: MachineSpec, network: NetworkKind) throws(VouchError) {
        try MicroVMGuest.requireTAP(machine, network: network, backend: name)
    }

    package func prepare(_ machine: MachineSpec, in run: RunEnvironment) throws(VouchError) -> BackendPlan {
        guard let settings = machine.firecracker else { throw VouchError(.invalidSpec, "not a firecracker machine", machine: machine.name) }
        try validate(machine, network: run.network)
        let guest = try settings.guest(machine: machine.name)
        let binary = try VMMBinary.locate(program: "firecracker", expectedName: "Firecracker", configured: settings.binary,
                                          environment: "VOUCH_FIRECRACKER", probeKernel: guest.kernel, machine: machine.name)
        let timeout = machine.bootTimeout
        return BackendPlan(readyUnit: guest.readyUnit) { context in
            FirecrackerBackend(context: context, binary: binary, guest: guest, memoryMiB: settings.memoryMiB, cpus: settings.cpus,
                               bootTimeout: timeout)
        }
    }

    package func whyMissing(_ capability: Capability) -> String? {
        switch capability {
        case .monitor: "firecracker has no QEMU monitor; its API is the VMM's control channel"
        case .screen, .keys: "firecracker has no display or keyboard (only a serial console)"
        default: nil
        }
    }

    package func benchmarkPlan(image: String, workDirectory: String) throws(VouchError) -> BenchmarkPlan {
        var machine = MachineSpec(name: "bench", firecracker: FirecrackerSettings(image: image))
        machine.vlans = []
        let kernel = (try? GuestImage.resolve(image))?.kernel.path ?? ""
        let binary = try VMMBinary.locate(program: "firecracker", expectedName: "Firecracker", configured: nil,
                                          environment: "VOUCH_FIRECRACKER", probeKernel: kernel, machine: "bench")
        return BenchmarkPlan(machines: [machine], measured: "bench",
                             runsOn: binary.needsKVM ? "\(binary.version), KVM" : "EMULATED (Vouch's emulator, guest under QEMU TCG)")
    }
}
