import Foundation
import VouchGuest
import VouchSupport
import VouchWire

/// Runs a machine as a cloud-hypervisor VM: `cloud-hypervisor --api-socket
/// path=S`, then `PUT /api/v1/vm.create` with the whole configuration
/// (payload, CPUs, memory, root disk, one TAP per VLAN, RNG, the serial
/// console on the process's stdout, vsock) and `vm.boot`. The backdoor
/// shell is the guest's vsock listener, as on firecracker.
///
/// A guest reboot restarts the VM in place, but the vsock connection does
/// not survive it, so `reboot` is refused for now; files travel through the
/// shell (`ShellFileCopy`).
final class CloudHypervisorBackend: MicroVMBackend, PowerControl {
    let kind = "cloud-hypervisor"
    let context: MachineContext
    let vmm: MicroVMProcess
    let guest: MicroVMGuest
    let memoryMiB: Int
    let cpus: Int
    let bootTimeout: Double

    static let base = "/api/v1/"

    init(context: MachineContext, binary: VMMBinary, guest: MicroVMGuest, memoryMiB: Int, cpus: Int, bootTimeout: Double) {
        self.context = context
        self.vmm = MicroVMProcess(context: context, binary: binary, name: "cloud-hypervisor", apiSocketName: "cloud-hypervisor.sock")
        self.guest = guest
        self.memoryMiB = memoryMiB
        self.cpus = cpus
        self.bootTimeout = bootTimeout
    }

    var arguments: [String] { ["--api-socket", "path=" + vmm.apiSocket] }

    /// Calls `PUT /api/v1/<endpoint>`.
    func put(_ endpoint: String, body: JSONValue? = nil, timeout: Double = UnixHTTPClient.defaultTimeout) async throws(VouchError) {
        try await vmm.api.call("PUT", Self.base + endpoint, body: body, timeout: timeout)
    }

    /// Calls `GET /api/v1/<endpoint>` and returns its JSON.
    func get(_ endpoint: String, timeout: Double = UnixHTTPClient.defaultTimeout) async throws(VouchError) -> JSONValue? {
        try await vmm.api.call("GET", Self.base + endpoint, timeout: timeout)
    }

    func start() async throws(VouchError) -> GuestChannel {
        let deadline = Deadline(seconds: bootTimeout)
        try vmm.makeStateDirectory()
        let disk = try await guest.copyRootDisk(into: context.stateDirectory, machine: context.name)
        _ = try await vmm.launch(arguments)
        do throws(VouchError) {
            try await put("vm.create", body: try vmConfig(hasDisk: disk != nil))
            try await put("vm.boot")
        } catch {
            await vmm.end(discard: true)
            throw VouchError(.bootFailed, "cloud-hypervisor could not start the VM: \(error.message)", machine: context.name,
                             outputTail: tail(vmm.stderrText.text), cause: error)
        }
        context.log.debug("vm.boot accepted; connecting to vsock port \(MicroVMGuest.backdoorPort)", machine: context.name)
        return try await vmm.connectShell(until: deadline)
    }

    /// The VmConfig of `vm.create`. Files are named relative to the VMM's
    /// working directory (the state directory) where a snapshot records them.
    private func vmConfig(hasDisk: Bool) throws(VouchError) -> JSONValue {
        var payload: [String: JSONValue] = [
            "kernel": .string(guest.kernel), "cmdline": .string(guest.commandLine(name: context.name, network: context.network)),
        ]
        if let initrd = guest.initrd { payload["initramfs"] = .string(initrd) }
        var config: [String: JSONValue] = [
            "payload": .object(payload),
            "cpus": ["boot_vcpus": .number(Double(cpus)), "max_vcpus": .number(Double(cpus))],
            "memory": ["size": .number(Double(memoryMiB) * 1024 * 1024)],
            "rng": ["src": "/dev/urandom"],
            "serial": ["mode": "Tty"],
            "console": ["mode": "Off"],
            "vsock": ["cid": 3, "socket": .string(MicroVMProcess.vsockName)],
        ]
        if hasDisk { config["disks"] = [["path": .string(MicroVMGuest.diskFile)]] }
        var nets: [JSONValue] = []
        for attachment in context.network?.attachments ?? [] {
            guard let tap = attachment.tap else {
                throw VouchError(.invalidSpec, "VLAN \(attachment.nic.vlan) has no TAP device (cloud-hypervisor needs \"network\": \"tap\")",
                                 machine: context.name)
            }
            nets.append(["tap": .string(tap), "mac": .string(attachment.nic.mac)])
        }
        if !nets.isEmpty { config["net"] = .array(nets) }
        return .object(config)
    }

    /// The process may stay up, serving its API, after the guest powered
    /// off: once `vm.info` says so, the VMM is asked to exit.
    func waitForExit() async throws(VouchError) -> ExitStatus {
        guard let process = vmm.process else { return try await vmm.waitForExit() }
        while try await process.waitForExit(until: Deadline(seconds: 0.5)) == nil {
            if (try? await get("vm.info", timeout: 1))??["state"]?.stringValue == "Shutdown" {
                _ = try? await put("vmm.shutdown", timeout: 1)
            }
        }
        return try await vmm.waitForExit()
    }

    func diagnose() async -> String? {
        await vmm.diagnose { () throws(VouchError) in
            let vmState = try await get("vm.info", timeout: 1)?["state"]?.stringValue ?? "unknown"
            return vmState == "Running" ? nil : "cloud-hypervisor says the VM is \(vmState)"
        }
    }

    // MARK: - Capabilities

    func permit(_ operation: PowerOperation) throws(VouchError) {
        if operation == .reboot {
            throw VouchError(.unsupported, "reboot is not supported by the cloud-hypervisor backend yet: the guest's vsock connection, which carries the shell, does not survive a reboot",
                             machine: context.name)
        }
    }

    func allowReboot(_ allowed: Bool) async throws(VouchError) {
        if allowed { try permit(.reboot) }
    }

    // MARK: - Teardown

    func stop(keepState: Bool) async {
        await vmm.end {
            _ = try? await self.put("vm.power-button", timeout: 1)
            _ = try? await self.put("vmm.shutdown", timeout: 1)
        }
        if !keepState { try? FileManager.default.removeItem(atPath: context.stateDirectory) }
    }
}
