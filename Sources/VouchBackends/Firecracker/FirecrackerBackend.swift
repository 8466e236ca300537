import Foundation
import VouchGuest
import VouchSupport
import VouchWire

/// Runs a machine as a Firecracker microVM: `firecracker --api-sock S`,
/// configured over its HTTP API (machine, boot source, root drive, one TAP
/// per VLAN, vsock, entropy), then `InstanceStart`. The serial console is the
/// process's stdout; the backdoor shell is the guest's vsock listener.
///
/// Firecracker ends when the guest reboots, so a shutdown is a guest
/// `reboot` and a reboot is not possible; it has no shared file system, so
/// files travel through the shell (`ShellFileCopy`).
final class FirecrackerBackend: MicroVMBackend, PowerControl {
    let kind = "firecracker"
    let context: MachineContext
    let vmm: MicroVMProcess
    let guest: MicroVMGuest
    let memoryMiB: Int
    let cpus: Int
    let bootTimeout: Double


    init(context: MachineContext, binary: VMMBinary, guest: MicroVMGuest, memoryMiB: Int, cpus: Int, bootTimeout: Double) {
        self.context = context
        self.vmm = MicroVMProcess(context: context, binary: binary, name: "firecracker", apiSocketName: "firecracker.sock")
        self.guest = guest
        self.memoryMiB = memoryMiB
        self.cpus = cpus
        self.bootTimeout = bootTimeout
    }

    var api: UnixHTTPClient { vmm.api }

    /// Firecracker's own arguments (the id: letters, digits and dashes).
    var arguments: [String] { ["--api-sock", vmm.apiSocket, "--id", HostName.forNode(context.name)] }

    func start() async throws(VouchError) -> GuestChannel {
        let deadline = Deadline(seconds: bootTimeout)
        try vmm.makeStateDirectory()
        let disk = try await guest.copyRootDisk(into: context.stateDirectory, machine: context.name)
        _ = try await vmm.launch(arguments)
        do throws(VouchError) {
            try await configure(hasDisk: disk != nil)
            try await api.call("PUT", "/actions", body: ["action_type": "InstanceStart"])
        } catch {
            await vmm.end(discard: true)
            throw VouchError(.bootFailed, "firecracker could not start the microVM: \(error.message)", machine: context.name,
                             outputTail: tail(vmm.stderrText.text), cause: error)
        }
        context.log.debug("InstanceStart accepted; connecting to vsock port \(MicroVMGuest.backdoorPort)", machine: context.name)
        return try await vmm.connectShell(until: deadline)
    }

    /// The pre-boot configuration, one resource at a time as the API wants it.
    private func configure(hasDisk: Bool) async throws(VouchError) {
        let api = self.api
        try await api.call("PUT", "/machine-config", body: ["vcpu_count": .number(Double(cpus)), "mem_size_mib": .number(Double(memoryMiB))])
        var boot: [String: JSONValue] = [
            "kernel_image_path": .string(guest.kernel),
            "boot_args": .string(guest.commandLine(name: context.name, network: context.network)),
        ]
        if let initrd = guest.initrd { boot["initrd_path"] = .string(initrd) }
        try await api.call("PUT", "/boot-source", body: .object(boot))
        if hasDisk {
            // By name: firecracker resolves it in its working directory, the state directory.
            try await api.call("PUT", "/drives/rootfs", body: [
                "drive_id": "rootfs", "path_on_host": .string(MicroVMGuest.diskFile), "is_root_device": true, "is_read_only": false,
            ])
        }
        for (i, attachment) in (context.network?.attachments ?? []).enumerated() {
            guard let tap = attachment.tap else {
                throw VouchError(.invalidSpec, "VLAN \(attachment.nic.vlan) has no TAP device (firecracker needs \"network\": \"tap\")",
                                 machine: context.name)
            }
            try await api.call("PUT", "/network-interfaces/eth\(i)", body: [
                "iface_id": .string("eth\(i)"), "host_dev_name": .string(tap), "guest_mac": .string(attachment.nic.mac),
            ])
        }
        try await api.call("PUT", "/vsock", body: ["guest_cid": 3, "uds_path": .string(MicroVMProcess.vsockName)])
        // virtio-rng, so the guest's entropy does not wait on a quiet microVM.
        try await api.call("PUT", "/entropy", body: [:])
    }

    func waitForExit() async throws(VouchError) -> ExitStatus { try await vmm.waitForExit() }

    func diagnose() async -> String? {
        await vmm.diagnose { () throws(VouchError) in
            let vmState = try await api.call("GET", "/", timeout: 1)?["state"]?.stringValue ?? "unknown"
            return vmState == "Running" ? nil : "firecracker says the microVM is \(vmState)"
        }
    }

    // MARK: - Capabilities

    /// Firecracker's guest ends the VMM by rebooting (`reboot=k`).
    var powerOffCommand: String { "reboot" }

    func permit(_ operation: PowerOperation) throws(VouchError) {
        if operation == .reboot {
            throw VouchError(.unsupported, "reboot is not supported by the firecracker backend: firecracker ends the microVM when its guest reboots",
                             machine: context.name)
        }
    }

    func allowReboot(_ allowed: Bool) async throws(VouchError) {
        if allowed { try permit(.reboot) }
    }

    // MARK: - Teardown

    func stop(keepState: Bool) async {
        await vmm.end { _ = try? await self.api.call("PUT", "/actions", body: ["action_type": "SendCtrlAltDel"], timeout: 1) }
        if !keepState { try? FileManager.default.removeItem(atPath: context.stateDirectory) }
    }
}
