import Foundation
import Glibc
import Synchronization
import VouchGuest
import VouchSupport
import VouchWire

/// Runs a machine as a Firecracker microVM: `firecracker --api-sock S`,
/// configured over its HTTP API (machine, boot source, root drive, one TAP
/// per VLAN, vsock), then `InstanceStart`. The serial console is the
/// process's stdout; the backdoor shell is the guest's vsock listener.
///
/// Firecracker ends when the guest reboots, so a shutdown is a guest
/// `reboot` and a reboot is not possible; it has no shared file system, so
/// files travel through the shell (`ShellFileCopy`).
final class FirecrackerBackend: Backend, PowerControl, Crashable, LinkControl, PortForwarding, FileTransfer, ConsoleInput {
    let kind = "firecracker"
    let context: MachineContext
    let binary: VMMBinary
    let guest: MicroVMGuest
    let memoryMiB: Int
    let cpus: Int
    let bootTimeout: Double

    struct State {
        var process: ChildProcess?
        var pumps: [Task<Void, Never>] = []
        var channel: GuestChannel?
        var forwarders: [PortForwarder] = []
    }

    let state = Mutex(State())
    let stderrText = OutputCollector()

    init(context: MachineContext, binary: VMMBinary, guest: MicroVMGuest, memoryMiB: Int, cpus: Int, bootTimeout: Double) {
        self.context = context
        self.binary = binary
        self.guest = guest
        self.memoryMiB = memoryMiB
        self.cpus = cpus
        self.bootTimeout = bootTimeout
    }

    var apiSocket: String { context.stateDirectory + "/firecracker.sock" }
    static let vsockName = "vsock.sock"
    var vsockSocket: String { context.stateDirectory + "/" + Self.vsockName }
    var api: UnixHTTPClient { UnixHTTPClient(socketPath: apiSocket, machine: context.name, peer: "firecracker") }
    var exitStatus: ExitStatus? { state.withLock { $0.process?.exitStatus } }

    func start() async throws(VouchError) -> GuestChannel {
        let name = context.name
        let deadline = Deadline(seconds: bootTimeout)
        try vouching("cannot create the state directory \(context.stateDirectory)", machine: name) {
            try FileManager.default.createDirectory(atPath: context.stateDirectory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        }
        let disk = try await guest.copyRootDisk(into: context.stateDirectory, machine: name)
        let process = try spawn()
        do throws(VouchError) {
            try await waitForAPISocket(process)
            try await configure(disk: disk)
            try await api.call("PUT", "/actions", body: ["action_type": "InstanceStart"])
        } catch {
            await endProcess()
            throw VouchError(.bootFailed, "firecracker could not start the microVM: \(error.message)", machine: name,
                             outputTail: tail(stderrText.text), cause: error)
        }
        context.log.debug("InstanceStart accepted; connecting to vsock port \(MicroVMGuest.backdoorPort)", machine: name)
        let channel: GuestChannel
        do {
            channel = try await VsockConnector.connect(path: vsockSocket, port: MicroVMGuest.backdoorPort, machine: name, until: deadline,
                                                       unless: { process.exitStatus != nil })
        } catch where error.kind == .cancelled {
            throw error
        } catch {
            let exited = process.exitStatus.map { "; firecracker exited (\($0))" } ?? ""
            throw VouchError(.bootFailed, error.message + exited, machine: name, outputTail: context.console.tail(lines: 30), cause: error)
        }
        state.withLock { $0.channel = channel }
        context.health.watch(channel.input)
        return channel
    }

    func spawn() throws(VouchError) -> ChildProcess {
        let name = context.name
        try? FileManager.default.removeItem(atPath: apiSocket)
        try? FileManager.default.removeItem(atPath: vsockSocket)
        let args = ["--api-sock", apiSocket, "--id", HostName.forNode(name)]
        // With a TAP network, firecracker runs inside the test's network namespace, where the TAPs are.
        let enter = context.network?.enterNamespace()
        let argv = enter.map { ["nsenter"] + $0 + [binary.path] + args } ?? [binary.path] + args
        let process: ChildProcess
        do {
            process = try ChildProcess(argv[0], Array(argv.dropFirst()), workingDirectory: context.stateDirectory,
                                       pipes: [.stdin, .stdout, .stderr], gathering: 0.005)
        } catch {
            throw error.on(name)
        }
        let collector = stderrText
        let pumps = [
            context.console.pump(process.stdout!.queue),
            context.console.pump(process.stderr!.queue, also: { collector.append($0) }),
        ]
        state.withLock { s in
            s.process = process
            s.pumps = pumps
        }
        context.log.log("started \(binary.version) (pid \(process.pid))" + (enter == nil ? "" : " in the test's network namespace"), machine: name)
        return process
    }

    /// Firecracker creates its API socket once it is ready for requests.
    func waitForAPISocket(_ process: ChildProcess) async throws(VouchError) {
        let ready = Deadline(seconds: 10)
        while (try? UnixSocket.connect(path: apiSocket)).map({ close($0) }) == nil {
            if let status = process.exitStatus {
                throw VouchError(.bootFailed, "firecracker exited (\(status)) before it opened its API socket", machine: context.name)
            }
            if ready.hasPassed {
                throw VouchError(.bootFailed, "firecracker did not open its API socket \(apiSocket) within 10 s"
                                 + (process.stateNote(as: "firecracker").map { " (\($0))" } ?? ""), machine: context.name)
            }
            try await delay(0.02)
        }
    }

    /// The pre-boot configuration, one resource at a time as the API wants it.
    private func configure(disk: String?) async throws(VouchError) {
        let api = self.api
        try await api.call("PUT", "/machine-config", body: ["vcpu_count": .number(Double(cpus)), "mem_size_mib": .number(Double(memoryMiB))])
        var boot: [String: JSONValue] = [
            "kernel_image_path": .string(guest.kernel),
            "boot_args": .string(guest.commandLine(name: context.name, network: context.network)),
        ]
        if let initrd = guest.initrd { boot["initrd_path"] = .string(initrd) }
        try await api.call("PUT", "/boot-source", body: .object(boot))
        if let disk {
            // Relative to firecracker's working directory (the state
            // directory): a snapshot records the paths, and must load in
            // another run's state directory too.
            try await api.call("PUT", "/drives/rootfs", body: [
                "drive_id": "rootfs", "path_on_host": .string((disk as NSString).lastPathComponent), "is_root_device": true,
                "is_read_only": false,
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
        try await api.call("PUT", "/vsock", body: ["guest_cid": 3, "uds_path": .string(Self.vsockName)])
    }

    func waitForExit() async throws(VouchError) -> ExitStatus {
        guard let (process, pumps) = state.withLock({ s in s.process.map { ($0, s.pumps) } }) else {
            throw VouchError(.bootFailed, "firecracker was never started", machine: context.name)
        }
        let status = try await process.waitForExit()
        _ = try? await withDeadline(seconds: 1) { for pump in pumps { await pump.value } }
        return status
    }

    func diagnose() async -> String? {
        guard let process = state.withLock({ $0.process }), process.exitStatus == nil else { return nil }
        if let note = process.stateNote(as: "firecracker") { return note }
        do {
            let info = try await api.call("GET", "/", timeout: 1)
            let vmState = info?["state"]?.stringValue ?? "unknown"
            return vmState == "Running" ? nil : "firecracker says the microVM is \(vmState)"
        } catch {
            return "firecracker (pid \(process.pid)) does not answer its API: \(error.message)"
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

    func crash() async throws(VouchError) {
        guard let process = state.withLock({ $0.process }) else { return }
        await process.kill()
        _ = try? await withDeadline(seconds: 2) { () throws(VouchError) in _ = try await self.waitForExit() }
    }

    func setLinks(up: Bool) async throws(VouchError) {
        guard let network = context.network, let enter = network.enterNamespace() else { return }
        for attachment in network.attachments {
            guard let tap = attachment.tap else { continue }
            let (status, output) = try await ChildProcess.run("nsenter", enter + ["ip", "link", "set", "dev", tap, up ? "up" : "down"], timeout: 10)
            guard status == .exited(0) else {
                throw VouchError(.other, "cannot set \(tap) \(up ? "up" : "down") (\(status))", machine: context.name, outputTail: tail(output))
            }
        }
    }

    func forwardPort(hostPort: Int, guestPort: Int) async throws(VouchError) {
        guard let network = context.network, let enter = network.enterNamespace(), let target = network.attachments.first?.nic.ipv4 else {
            throw VouchError(.unsupported, "forwardPort on firecracker needs the machine on a VLAN of a TAP network", machine: context.name)
        }
        do {
            let forwarder = try PortForwarder(hostPort: hostPort, address: target, port: guestPort, enter: enter)
            state.withLock { $0.forwarders.append(forwarder) }
        } catch {
            throw VouchError(.other, "cannot forward 127.0.0.1:\(hostPort)", machine: context.name, cause: error)
        }
    }

    func pushShared(_ item: String, shell: GuestShell) async throws(VouchError) {
        try await ShellFileCopy.push(item, from: context.sharedDirectory, to: guestSharedDirectory, shell: shell, machine: context.name)
    }

    func pullShared(_ item: String, shell: GuestShell) async throws(VouchError) {
        try await ShellFileCopy.pull(item, from: guestSharedDirectory, to: context.sharedDirectory, shell: shell, machine: context.name)
    }

    func sendConsole(_ bytes: [UInt8]) async throws(VouchError) {
        guard let process = state.withLock({ $0.process }), process.exitStatus == nil, let fd = process.stdinFD else {
            throw VouchError(.machineDown, "firecracker is not running", machine: context.name)
        }
        try await writeAll(fd: fd, bytes, what: "the serial console's input", until: Deadline(seconds: 10))
    }

    // MARK: - Teardown

    func stop(keepState: Bool) async {
        await endProcess()
        if !keepState { try? FileManager.default.removeItem(atPath: context.stateDirectory) }
    }

    /// Asks the guest to stop (Ctrl-Alt-Del) for a second, then ends the
    /// process: about 3 s at most, frozen VMM included. `discard`: the
    /// guest's state is thrown away (a restore replaces it), so it is killed.
    func endProcess(discard: Bool = false) async {
        let (process, channel, pumps, forwarders) = state.withLock { s in
            defer {
                s.forwarders.removeAll()
                s.channel = nil
            }
            return (s.process, s.channel, s.pumps, s.forwarders)
        }
        for forwarder in forwarders { await forwarder.stop() }
        if let process, process.exitStatus == nil {
            if discard || process.stateNote(as: "firecracker") != nil {
                await process.kill()
            } else {
                _ = try? await api.call("PUT", "/actions", body: ["action_type": "SendCtrlAltDel"], timeout: 1)
                if (try? await process.waitForExit(until: Deadline(seconds: 1))) == nil {
                    await process.terminate(grace: 1)
                }
            }
        }
        channel?.close()
        _ = try? await withDeadline(seconds: 1) { for pump in pumps { await pump.value } }
    }
}
