import Foundation
import Glibc
import Synchronization

/// Runs a machine as a QEMU process: direct kernel boot of a Vouch image, or
/// a nixpkgs start script with the test devices added.
///
/// The guest shell travels over a socketpair whose one end QEMU inherits
/// (`-chardev socket,fd=3`), connected before QEMU starts so nothing the
/// guest prints is lost. QEMU's virtconsole silently *drops* output when that
/// socket's send buffer is full (it cannot make the guest's console driver
/// wait), so Vouch raises QEMU's send buffer to `shellSendBuffer`: output is
/// lost only if Vouch's reader is starved for seconds.
final class QEMUBackend: Backend {
    let kind = "qemu"
    let context: MachineContext
    let config: QEMUConfig
    let hostnameParameter: String
    /// Called once the accelerator is chosen, so the log can say which and why.
    let probeKernel: String?

    struct State {
        var process: ChildProcess?
        var qmp: QMPClient?
        var shellReader: FDReader?
        var shellWriteFD: Int32 = -1
        var pumps: [Task<Void, Never>] = []
        var forwarders: [PortForwarder] = []
        var stopped = false
        var accelerator: Accelerator.Kind?
        var memory: GuestMemory?
        /// Port forwards (host, guest), set up again in a restored QEMU.
        var forwards: [(host: Int, guest: Int)] = []
        /// Whether `setLinks(up: false)` is in force (re-applied after a restore).
        var linksDown = false
    }

    /// Send buffer for QEMU's end of the shell socket (see the type's documentation).
    static let shellSendBuffer: Int32 = 64 << 20

    let state = Mutex(State())
    private let stderrText = OutputCollector()

    init(context: MachineContext, config: QEMUConfig, hostnameParameter: String, probeKernel: String?) {
        self.context = context
        self.config = config
        self.hostnameParameter = hostnameParameter
        self.probeKernel = probeKernel
    }

    var exitStatus: ExitStatus? { state.withLock { $0.process?.exitStatus } }

    func start() async throws -> GuestChannel {
        let name = context.name
        let fm = FileManager.default
        try fm.createDirectory(atPath: context.stateDirectory, withIntermediateDirectories: true,
                               attributes: [.posixPermissions: 0o700])
        let (accel, reason) = await Accelerator.resolve(config.accelerator, probeKernel: probeKernel, qemu: config.qemuBinary)
        if Accelerator.firstAnnouncement() {
            if accel == .tcg { context.log.warning(reason) } else { context.log.log(reason) }
        } else {
            context.log.debug("accelerator: \(accel.rawValue)", machine: name)
        }

        var overlay: String?
        if case .direct(_, _, let rootDisk?, _) = config.boot {
            overlay = try await makeOverlay(over: rootDisk)
        }
        // Guest RAM in a shared memfd lets a snapshot skip copying it (see QEMUSnapshot.swift).
        var memory: GuestMemory?
        if case .direct = config.boot { memory = .memfd }
        return try await launch(accelerator: accel, overlay: overlay, memory: memory, incoming: false)
    }

    /// Starts QEMU with the given disk overlay and RAM backing; `incoming`
    /// leaves it paused, waiting for a snapshot's device state.
    func launch(accelerator accel: Accelerator.Kind, overlay: String?, memory: GuestMemory?, incoming: Bool) async throws -> GuestChannel {
        let name = context.name
        var commandLine = QEMUCommandLine(
            config: config, stateDirectory: context.stateDirectory, sharedDirectory: context.sharedDirectory,
            accelerator: accel, overlay: overlay, network: context.network)
        commandLine.memory = memory
        commandLine.incoming = incoming
        state.withLock { s in
            s.accelerator = accel
            s.memory = memory
        }
        let (hostEnd, qemuEnd) = try UnixSocket.pair()
        defer { close(qemuEnd) }
        let granted = UnixSocket.growSendBuffer(qemuEnd, to: Self.shellSendBuffer)
        context.log.debug("guest shell socket send buffer: \(granted / 1024) KiB", machine: name)
        if granted < Self.shellSendBuffer / 2 {
            context.log.warning("cannot raise the console socket buffer (not root?): large outputs may be lost if Vouch is starved for CPU", machine: name)
        }

        let args = commandLine.arguments(hostnameParameter: hostnameParameter, hostname: name)
        // With a TAP network, QEMU runs inside the test's network namespace.
        let enter = context.network?.enterNamespace()
        func launch(_ program: String, environment: [String: String]? = nil) throws -> ChildProcess {
            guard let enter else {
                return try ChildProcess(program, args, environment: environment, workingDirectory: context.stateDirectory,
                                        inheritedFD: qemuEnd)
            }
            return try ChildProcess("nsenter", enter + [program] + args, environment: environment,
                                    workingDirectory: context.stateDirectory, inheritedFD: qemuEnd)
        }
        let process: ChildProcess
        do {
            switch config.boot {
            case .direct:
                process = try launch(config.qemuBinary)
            case .startScript(let script):
                process = try launch(script, environment: commandLine.startScriptEnvironment(base: ProcessInfo.processInfo.environment))
            }
        } catch {
            close(hostEnd)
            throw error
        }
        let console = context.console
        let collector = stderrText
        let pumps = [
            Task { while let chunk = try? await process.stdout!.queue.next() { console.feed(chunk) }; console.flush() },
            Task {
                while let chunk = try? await process.stderr!.queue.next() {
                    collector.append(chunk)
                    console.feed(chunk)
                }
            },
        ]
        state.withLock { s in
            s.process = process
            s.pumps = pumps
        }
        let program: String
        switch config.boot {
        case .direct: program = config.qemuBinary
        case .startScript(let script): program = script
        }
        context.log.log("started \(program) (pid \(process.pid))" + (enter == nil ? "" : " in the test's network namespace"), machine: name)
        context.log.debug("command line: \(process.executable) \(args.joined(separator: " "))", machine: name)

        let writeFD = dup(hostEnd)
        let reader = FDReader(fd: hostEnd, name: "shell-\(name)")
        state.withLock { s in
            s.shellReader = reader
            s.shellWriteFD = writeFD
        }
        let qmp: QMPClient
        do {
            qmp = try await QMPClient.connect(path: commandLine.qmpSocket, machine: name, whileRunning: process)
        } catch {
            if let status = process.exitStatus {
                try? await Task.sleep(for: .milliseconds(50))
                throw VouchError(.bootFailed, "QEMU exited (\(status)) before the guest started", machine: name,
                                 outputTail: tail(collector.text))
            }
            throw error
        }
        state.withLock { $0.qmp = qmp }
        context.log.debug("QMP ready", machine: name)
        return GuestChannel(input: reader.queue, send: { try writeAll(fd: writeFD, $0) }, close: { reader.shutdownSocket() })
    }

    /// The qcow2 overlay that takes every write, so the image stays pristine.
    private func makeOverlay(over disk: String) async throws -> String {
        let overlay = context.stateDirectory + "/root.qcow2"
        // A machine started again after a crash or shutdown keeps its disk.
        if FileManager.default.fileExists(atPath: overlay) { return overlay }
        let (status, output) = try await ChildProcess.run("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "raw", "-b", disk, overlay])
        guard status == .exited(0) else {
            throw VouchError(.bootFailed, "qemu-img could not create the disk overlay (\(status))",
                             machine: context.name, outputTail: tail(output))
        }
        return overlay
    }

    func waitForExit() async throws -> ExitStatus {
        guard let (process, pumps) = state.withLock({ s in s.process.map { ($0, s.pumps) } }) else {
            throw VouchError(.bootFailed, "QEMU was never started", machine: context.name)
        }
        let status = try await process.waitForExit()
        // Report the exit only once the console is complete: callers quote its
        // tail (a kernel panic) right after.
        for pump in pumps { _ = try? await withDeadline(seconds: 1) { await pump.value } }
        return status
    }

    /// QEMU's own error output (not the guest's), for error messages.
    var qemuErrors: String { stderrText.text }

    func allowReboot(_ allowed: Bool) async throws {
        try await qmp().execute("set-action", ["reboot": .string(allowed ? "reset" : "shutdown")])
    }

    func forwardPort(hostPort: Int, guestPort: Int) async throws {
        guard case .direct = config.boot, let network = context.network else {
            throw VouchError(.unsupported, "forwardPort needs a machine booted by Vouch (not a start script)", machine: context.name)
        }
        if let enter = network.enterNamespace() {
            // QEMU runs in the test's namespace: relay from the host into it.
            guard let target = network.attachments.first?.nic.ipv4 else {
                throw VouchError(.unsupported, "forwardPort with a TAP network needs the machine on a VLAN", machine: context.name)
            }
            let forwarder: PortForwarder
            do {
                forwarder = try PortForwarder(hostPort: hostPort, address: target, port: guestPort, enter: enter)
            } catch {
                throw VouchError(.other, "cannot forward 127.0.0.1:\(hostPort): \(error)", machine: context.name)
            }
            state.withLock {
                $0.forwarders.append(forwarder)
                $0.forwards.append((hostPort, guestPort))
            }
            return
        }
        let reply = try await qmp().execute(
            "human-monitor-command", ["command-line": .string("hostfwd_add forward tcp:127.0.0.1:\(hostPort)-:\(guestPort)")])
        if let text = reply.stringValue, !text.isEmpty {
            throw VouchError(.other, "QEMU refused the port forward \(hostPort) -> \(guestPort): \(text.trimmingTrailingNewlines())",
                             machine: context.name)
        }
        state.withLock { $0.forwards.append((hostPort, guestPort)) }
    }

    func setLinks(up: Bool) async throws {
        let qmp = try qmp()
        for attachment in context.network?.attachments ?? [] {
            try await qmp.execute("set_link", ["name": .string(attachment.nic.netdev), "up": .bool(up)])
        }
        state.withLock { $0.linksDown = !up }
    }

    func crash() async throws {
        let qmp = try qmp()
        _ = try? await withDeadline(seconds: 2) { try await qmp.execute("quit") }
        _ = try? await withDeadline(seconds: 5) { try await self.waitForExit() }
    }

    func sendKeys(_ keys: [String]) async throws {
        let list = keys.map { JSONValue.object(["type": "qcode", "data": .string($0)]) }
        try await qmp().execute("send-key", ["keys": .array(list)])
    }

    func monitorCommand(_ command: String) async throws -> String {
        try await qmp().execute("human-monitor-command", ["command-line": .string(command)]).stringValue ?? ""
    }

    func qmp() throws -> QMPClient {
        guard let qmp = state.withLock({ $0.qmp }) else {
            throw VouchError(.machineDown, "QEMU is not running", machine: context.name)
        }
        return qmp
    }

    func stop(keepState: Bool) async {
        state.withLock { $0.stopped = true }
        await endProcess()
        if !keepState { try? FileManager.default.removeItem(atPath: context.stateDirectory) }
    }

    /// Ends the QEMU process and its sockets and pumps, keeping the state
    /// directory, so the backend can launch again (a snapshot restore).
    /// `discard`: the guest's state is thrown away, so QEMU is killed at once
    /// instead of asked to quit.
    func endProcess(discard: Bool = false) async {
        let (process, qmp, reader, writeFD, pumps, forwarders) = state.withLock { s in
            defer {
                s.shellWriteFD = -1
                s.forwarders.removeAll()
                s.qmp = nil
                s.shellReader = nil
            }
            return (s.process, s.qmp, s.shellReader, s.shellWriteFD, s.pumps, s.forwarders)
        }
        for forwarder in forwarders { await forwarder.stop() }
        if let process, process.exitStatus == nil {
            if discard {
                process.signal(SIGKILL)
            } else if let qmp {
                _ = try? await withDeadline(seconds: 1) { try await qmp.execute("quit") }
                _ = try? await withDeadline(seconds: 1) { try await process.waitForExit() }
            }
            await process.terminate(grace: 1)
        }
        await qmp?.close()
        reader?.shutdownSocket()
        if writeFD >= 0 { close(writeFD) }
        for pump in pumps { _ = try? await withDeadline(seconds: 1) { await pump.value } }
    }
}

extension OutputCollector {
    func append(_ chunk: [UInt8]) { appendBytes(chunk) }
}
