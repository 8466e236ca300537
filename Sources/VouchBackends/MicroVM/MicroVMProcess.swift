import Foundation
import Glibc
import Synchronization
import VouchGuest
import VouchSupport
import VouchWire

/// The part of a microVM backend that is the same for firecracker and
/// cloud-hypervisor: the VMM process (in the test's network namespace on
/// TAP networks) with its console pumps, its API socket, the backdoor shell
/// over its vsock socket, the TAP links, port forwards, and a bounded end.
/// The backends add what their APIs say.
final class MicroVMProcess: Sendable {
    let context: MachineContext
    let binary: VMMBinary
    /// The VMM's name in messages ("firecracker", "cloud-hypervisor").
    let name: String

    /// Both live in the state directory, the VMM's working directory, and
    /// are given to the VMM by name: a snapshot records paths, and must load
    /// in another run's state directory too.
    static let vsockName = "vsock.sock"
    let apiSocket: String

    struct State {
        var process: ChildProcess?
        var pumps: [Task<Void, Never>] = []
        var channel: GuestChannel?
        var forwarders: [PortForwarder] = []
    }

    let state = Mutex(State())
    /// The VMM's own error output (not the guest's), for error messages.
    let stderrText = OutputCollector()

    init(context: MachineContext, binary: VMMBinary, name: String, apiSocketName: String) {
        self.context = context
        self.binary = binary
        self.name = name
        self.apiSocket = context.stateDirectory + "/" + apiSocketName
    }

    var vsockSocket: String { context.stateDirectory + "/" + Self.vsockName }
    var api: UnixHTTPClient { UnixHTTPClient(socketPath: apiSocket, machine: context.name, peer: name) }
    var process: ChildProcess? { state.withLock { $0.process } }
    var exitStatus: ExitStatus? { process?.exitStatus }

    func makeStateDirectory() throws(VouchError) {
        try vouching("cannot create the state directory \(context.stateDirectory)", machine: context.name) {
            try FileManager.default.createDirectory(atPath: context.stateDirectory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        }
    }

    /// Starts the VMM with `arguments` and waits until its API socket accepts.
    /// - Throws: `.spawnFailed`; `.bootFailed` when it exits or stays silent
    ///   for 10 s first (it is then ended).
    func launch(_ arguments: [String]) async throws(VouchError) -> ChildProcess {
        try? FileManager.default.removeItem(atPath: apiSocket)
        try? FileManager.default.removeItem(atPath: vsockSocket)
        let enter = context.network?.enterNamespace()
        let argv = enter.map { ["nsenter"] + $0 + [binary.path] + arguments } ?? [binary.path] + arguments
        let process: ChildProcess
        do {
            process = try ChildProcess(argv[0], Array(argv.dropFirst()), workingDirectory: context.stateDirectory,
                                       pipes: [.stdin, .stdout, .stderr], gathering: 0.005)
        } catch {
            throw error.on(context.name)
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
        context.log.log("started \(binary.version) (pid \(process.pid))" + (enter == nil ? "" : " in the test's network namespace"),
                        machine: context.name)
        do {
            try await waitForAPISocket(process)
        } catch {
            await end(discard: true)
            throw error
        }
        return process
    }

    private func waitForAPISocket(_ process: ChildProcess) async throws(VouchError) {
        let ready = Deadline(seconds: 10)
        while (try? UnixSocket.connect(path: apiSocket)).map({ close($0) }) == nil {
            if let status = process.exitStatus {
                throw VouchError(.bootFailed, "\(name) exited (\(status)) before it opened its API socket", machine: context.name,
                                 outputTail: tail(stderrText.text))
            }
            if ready.hasPassed {
                throw VouchError(.bootFailed, "\(name) did not open its API socket \(apiSocket) within 10 s"
                                 + (process.stateNote(as: name).map { " (\($0))" } ?? ""), machine: context.name)
            }
            try await delay(0.02)
        }
    }

    /// Connects to the guest's backdoor on vsock, retrying until it listens.
    /// - Throws: `.bootFailed` with the console tail when it does not by `deadline`.
    func connectShell(until deadline: Deadline) async throws(VouchError) -> GuestChannel {
        guard let process else { throw VouchError(.bootFailed, "\(name) is not running", machine: context.name) }
        let channel: GuestChannel
        do {
            channel = try await VsockConnector.connect(path: vsockSocket, port: MicroVMGuest.backdoorPort, machine: context.name,
                                                       until: deadline, unless: { process.exitStatus != nil })
        } catch where error.kind == .cancelled {
            throw error
        } catch {
            let exited = process.exitStatus.map { "; \(name) exited (\($0))" } ?? ""
            throw VouchError(.bootFailed, error.message + exited, machine: context.name, outputTail: context.console.tail(lines: 30),
                             cause: error)
        }
        state.withLock { $0.channel = channel }
        context.health.watch(channel.input)
        return channel
    }

    func waitForExit() async throws(VouchError) -> ExitStatus {
        guard let (process, pumps) = state.withLock({ s in s.process.map { ($0, s.pumps) } }) else {
            throw VouchError(.bootFailed, "\(name) was never started", machine: context.name)
        }
        let status = try await process.waitForExit()
        _ = try? await withDeadline(seconds: 1) { for pump in pumps { await pump.value } }
        return status
    }

    /// A note when the process is stopped or stuck, or when `askState`
    /// (the VMM's API, within a second) says the guest is not running.
    func diagnose(askState: () async throws(VouchError) -> String?) async -> String? {
        guard let process, process.exitStatus == nil else { return nil }
        if let note = process.stateNote(as: name) { return note }
        do {
            return try await askState()
        } catch {
            return "\(name) (pid \(process.pid)) does not answer its API: \(error.message)"
        }
    }

    func kill() async {
        guard let process else { return }
        await process.kill()
        _ = try? await withDeadline(seconds: 2) { () throws(VouchError) in _ = try await self.waitForExit() }
    }

    /// Takes every TAP of the machine down or up (`block`/`unblock`).
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

    /// Relays a host loopback port into the namespace, to the guest's first address.
    func forwardPort(hostPort: Int, guestPort: Int) async throws(VouchError) {
        guard let network = context.network, let enter = network.enterNamespace(), let target = network.attachments.first?.nic.ipv4 else {
            throw VouchError(.unsupported, "forwardPort on \(name) needs the machine on a VLAN of a TAP network", machine: context.name)
        }
        do {
            let forwarder = try PortForwarder(hostPort: hostPort, address: target, port: guestPort, enter: enter)
            state.withLock { $0.forwarders.append(forwarder) }
        } catch {
            throw VouchError(.other, "cannot forward 127.0.0.1:\(hostPort)", machine: context.name, cause: error)
        }
    }

    /// Types into the serial console (the VMM reads it from its stdin).
    func sendConsole(_ bytes: [UInt8]) async throws(VouchError) {
        guard let process, process.exitStatus == nil, let fd = process.stdinFD else {
            throw VouchError(.machineDown, "\(name) is not running", machine: context.name)
        }
        try await writeAll(fd: fd, bytes, what: "the serial console's input", until: Deadline(seconds: 10))
    }

    /// Ends the process: `graceful` (an API call asking the guest to stop)
    /// gets a second, then SIGTERM, then SIGKILL; about 3 s at most, frozen
    /// VMM included. `discard`: the guest's state is thrown away, so it is killed.
    func end(discard: Bool = false, graceful: (() async -> Void)? = nil) async {
        let (process, channel, pumps, forwarders) = state.withLock { s in
            defer {
                s.forwarders.removeAll()
                s.channel = nil
            }
            return (s.process, s.channel, s.pumps, s.forwarders)
        }
        for forwarder in forwarders { await forwarder.stop() }
        if let process, process.exitStatus == nil {
            if discard || process.stateNote(as: name) != nil {
                await process.kill()
            } else {
                await graceful?()
                if (try? await process.waitForExit(until: Deadline(seconds: 1))) == nil {
                    await process.terminate(grace: 1)
                }
            }
        }
        channel?.close()
        _ = try? await withDeadline(seconds: 1) { for pump in pumps { await pump.value } }
    }
}

/// A backend whose machine is a `MicroVMProcess`: what both VMMs do the
/// same way comes from here.
protocol MicroVMBackend: Crashable, LinkControl, PortForwarding, FileTransfer, ConsoleInput {
    var vmm: MicroVMProcess { get }
    var context: MachineContext { get }
    var guest: MicroVMGuest { get }
}

extension MicroVMBackend {
    var exitStatus: ExitStatus? { vmm.exitStatus }

    func crash() async throws(VouchError) { await vmm.kill() }
    func setLinks(up: Bool) async throws(VouchError) { try await vmm.setLinks(up: up) }
    func forwardPort(hostPort: Int, guestPort: Int) async throws(VouchError) { try await vmm.forwardPort(hostPort: hostPort, guestPort: guestPort) }
    func sendConsole(_ bytes: [UInt8]) async throws(VouchError) { try await vmm.sendConsole(bytes) }

    /// No shared file system: through the shell.
    func pushShared(_ item: String, shell: GuestShell) async throws(VouchError) {
        try await ShellFileCopy.push(item, from: context.sharedDirectory, to: guestSharedDirectory, shell: shell, machine: context.name)
    }

    func pullShared(_ item: String, shell: GuestShell) async throws(VouchError) {
        try await ShellFileCopy.pull(item, from: guestSharedDirectory, to: context.sharedDirectory, shell: shell, machine: context.name)
    }

    /// Copies the machine's disk into a snapshot `directory`: neither VMM's snapshot holds disks.
    func saveDisk(into directory: String) async throws(VouchError) {
        guard guest.rootDisk != nil else { return }
        try await MicroVMGuest.copy(context.stateDirectory + "/" + MicroVMGuest.diskFile, to: directory + "/" + MicroVMGuest.diskFile,
                                    machine: context.name)
    }

    /// Puts the disk of a snapshot `directory` back in place of the machine's.
    func restoreDisk(from directory: String) async throws(VouchError) {
        guard guest.rootDisk != nil else { return }
        let disk = context.stateDirectory + "/" + MicroVMGuest.diskFile
        try? FileManager.default.removeItem(atPath: disk)
        try await MicroVMGuest.copy(directory + "/" + MicroVMGuest.diskFile, to: disk, machine: context.name)
    }
}
