import Foundation
import VouchSupport

/// Settings of the `cloud-hypervisor` backend.
public struct CloudHypervisorSettings: MicroVMSettings, Equatable {
    public static let backend = "cloud-hypervisor"

    public var image: String?
    public var kernel: String?
    public var initrd: String?
    public var disk: String?
    public var cmdline: String?
    public var memoryMiB = 512
    public var cpus = 1
    /// The executable (default: `$VOUCH_CLOUD_HYPERVISOR`, else `cloud-hypervisor` on PATH).
    public var binary: String?

    public init() {}

    /// The built-in `image`.
    public init(image: String?) {
        self.image = image
    }
}

extension MachineSpec {
    /// A cloud-hypervisor machine.
    public init(name: String, cloudHypervisor: CloudHypervisorSettings) {
        self.init(name: name, settings: cloudHypervisor)
    }

    /// The cloud-hypervisor settings, if this is a cloud-hypervisor machine.
    public var cloudHypervisor: CloudHypervisorSettings? { settings as? CloudHypervisorSettings }
}

/// The `cloud-hypervisor` backend: a cloud-hypervisor VM per machine,
/// created over its REST API, with the backdoor on vsock.
package struct CloudHypervisorProvider: BackendProvider {
    package let name = CloudHypervisorSettings.backend
    package let keys = MicroVMGuest.specKeys

    package init() {}

    package func parse(_ o: SpecObject, into machine: inout MachineSpec) throws(VouchError) {
        // cloud-hypervisor's limit on x86_64 (boot_vcpus is a u8, at most 254 usable).
        machine.settings = try CloudHypervisorSettings.parse(o, maxCPUs: 254)
    }

    package func validate(_ machine: MachineSpec, network: NetworkKind) throws(VouchError) {
        try MicroVMGuest.requireTAP(machine, network: network, backend: name)
    }

    package func prepare(_ machine: MachineSpec, in run: RunEnvironment) throws(VouchError) -> BackendPlan {
        guard let settings = machine.cloudHypervisor else { throw VouchError(.invalidSpec, "not a cloud-hypervisor machine", machine: machine.name) }
        try validate(machine, network: run.network)
        let guest = try settings.guest(machine: machine.name)
        let binary = try Self.binary(settings.binary, probeKernel: guest.kernel, machine: machine.name)
        let timeout = machine.bootTimeout
        return BackendPlan(readyUnit: guest.readyUnit) { context in
            CloudHypervisorBackend(context: context, binary: binary, guest: guest, memoryMiB: settings.memoryMiB, cpus: settings.cpus,
                                   bootTimeout: timeout)
        }
    }

    static func binary(_ configured: String?, probeKernel: String, machine: String) throws(VouchError) -> VMMBinary {
        try VMMBinary.locate(program: "cloud-hypervisor", expectedName: "cloud-hypervisor", configured: configured,
                             environment: "VOUCH_CLOUD_HYPERVISOR", probeKernel: probeKernel, machine: machine)
    }

    package func whyMissing(_ capability: Capability) -> String? {
        switch capability {
        case .monitor: "cloud-hypervisor has no QEMU monitor; its REST API is the VMM's control channel"
        case .screen, .keys: "Vouch runs cloud-hypervisor without a display (serial console and vsock only)"
        default: nil
        }
    }

    package func benchmarkPlan(image: String, workDirectory: String) throws(VouchError) -> BenchmarkPlan {
        var machine = MachineSpec(name: "bench", cloudHypervisor: CloudHypervisorSettings(image: image))
        machine.vlans = []
        let binary = try Self.binary(nil, probeKernel: (try? GuestImage.resolve(image))?.kernel.path ?? "", machine: "bench")
        return BenchmarkPlan(machines: [machine], measured: "bench",
                             runsOn: binary.needsKVM ? "\(binary.version), KVM" : "EMULATED (Vouch's emulator, guest under QEMU TCG)")
    }
}
