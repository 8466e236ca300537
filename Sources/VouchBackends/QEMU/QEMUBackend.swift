import Foundation
import Glibc
import Synchronization
import VouchGuest
import VouchSupport
import VouchWire

/// Runs a machine as a QEMU process: direct kernel boot of a Vouch image, or
/// a nixpkgs start script with the test devices added.
///
/// The guest shell travels over a socketpair whose one end QEMU inherits
/// (`-chardev socket,fd=3`), connected before QEMU starts so nothing the
/// guest prints is lost. QEMU's virtconsole silently *drops* output when that
/// socket's send buffer is full (it cannot make the guest's console driver
/// wait), so Vouch raises QEMU's send buffer to `shellSendBuffer`: output is
/// lost only if Vouch's reader is starved for seconds.
///
/// QMP events are watched (`QEMUWatch.swift`): a guest QEMU pauses on a disk
/// error, or a panic, fails the machine's waiting calls at once.
final class QEMUBackend: Backend, PowerControl, Crashable, LinkControl, PortForwarding, KeyInput, MonitorAccess, FileTransfer {
    let kind = "qemu"
    let context: MachineContext
    let config: QEMUConfig
    let hostnameParameter: String
    /// A kernel to probe KVM with (the accelerator is chosen at start).
    let probeKernel: String?

    struct State {
        var process: ChildProcess?
        var qmp: QMPClient?
        /// Connected on first use (`monitorTranscript`).
        var monitor: HumanMonitorClient?
        var channel: GuestChannel?
        var pumps: [Task<Void, Never>] = []
        var forwarders: [PortForwarder] = []
        var stopped = false
        var accelerator: Accelerator.Kind?
        var memory: GuestMemory?
        /// Port forwards (host, guest), set up again in a restored QEMU.
        var forwards: [(host: Int, guest: Int)] = []
        /// Whether `setLinks(up: false)` is in force (re-applied after a restore).
        var linksDown = false
        /// Set while Vouch itself pauses the guest, so its STOP event is expected.
        var pausing = false
        /// The last disk error QEMU reported, to explain the pause that follows.
        var blockError: JSONValue?
        /// The guest's 9p mounts taken down for a snapshot (tag, mount point).
        var unmounted: [[String]] = []
    }

    /// Send buffer for QEMU's end of the shell socket (see the type's documentation).
    static let shellSendBuffer: Int32 = 64 << 20

    /// QEMU writes the emulated serial port's output one byte per write:
    /// reading it as it comes cost the driver a core during a console flood.
    /// Pausing 5 ms after each read batches it (a console line shows up at
    /// most that much later; the guest shell is not on this pipe).
    static let serialGathering = 0.005

    let state = Mutex(State())
    private let stderrText = OutputCollector()

    init(context: MachineContext, config: QEMUConfig, hostnameParameter: String, probeKernel: String?) {
        self.context = context
        self.config = config
        self.hostnameParameter = hostnameParameter
        self.probeKernel = probeKernel
    }

    var exitStatus: ExitStatus? { state.withLock { $0.process?.exitStatus } }

    func start() async throws(VouchError) -> GuestChannel {
        let name = context.name
        try makeStateDirectory()
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

    func makeStateDirectory() throws(VouchError) {
        try vouching("cannot create the state directory \(context.stateDirectory)", machine: context.name) {
            try FileManager.default.createDirectory(atPath: context.stateDirectory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        }
    }

    /// Starts QEMU with the given disk overlay and RAM backing; `incoming`
    /// leaves it paused, waiting for a snapshot's device state.
    func launch(accelerator accel: Accelerator.Kind, overlay: String?, memory: GuestMemory?, incoming: Bool) async throws(VouchError) -> GuestChannel {
        let name = context.name
        var commandLine = QEMUCommandLine(
            config: config, stateDirectory: context.stateDirectory, sharedDirectory: context.sharedDirectory,
            accelerator: accel, overlay: overlay, network: context.network)
        commandLine.memory = memory
        commandLine.incoming = incoming
        state.withLock { s in
            s.accelerator = accel
            s.memory = memory
            s.blockError = nil
        }
        let (hostEnd, qemuEnd): (Int32, Int32)
        do { (hostEnd, qemuEnd) = try UnixSocket.pair() } catch {
            throw VouchError(.spawnFailed, "cannot create the guest shell socket", machine: name, cause: error)
        }
        defer { close(qemuEnd) }
        let granted = UnixSocket.growSendBuffer(qemuEnd, to: Self.shellSendBuffer)
        context.log.debug("guest shell socket send buffer: \(granted / 1024) KiB", machine: name)
        if granted < Self.shellSendBuffer / 2 {
            context.log.warning("cannot raise the console socket buffer (not root?): large outputs may be lost if Vouch is starved for CPU", machine: name)
        }

        let args = commandLine.arguments(hostnameParameter: hostnameParameter, hostname: HostName.forNode(name))
        // With a TAP network, QEMU runs inside the test's network namespace.
        let enter = context.network?.enterNamespace()
        let program: String
        var environment: [String: String]?
        switch config.boot {
        case .direct:
            program = config.qemuBinary
        case .startScript(let script):
            program = script
            environment = commandLine.startScriptEnvironment(base: ProcessInfo.processInfo.environment)
        }
        let process: ChildProcess
        do throws(VouchError) {
            let argv = enter.map { ["nsenter"] + $0 + [program] + args } ?? [program] + args
            process = try ChildProcess(argv[0], Array(argv.dropFirst()), environment: environment,
                                       workingDirectory: context.stateDirectory, pipes: [.stdin, .stdout, .stderr], inheritedFD: qemuEnd,
                                       gathering: QEMUBackend.serialGathering)
        } catch {
            close(hostEnd)
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
        context.log.log("started \(program) (pid \(process.pid))" + (enter == nil ? "" : " in the test's network namespace"), machine: name)
        context.log.debug("command line: \(process.executable) \(args.joined(separator: " "))", machine: name)

        let channel = GuestChannel(reader: FDReader(fd: hostEnd, name: "shell-\(name)"), writeFD: dup(hostEnd), name: name)
        context.health.watch(channel.input)
        state.withLock { $0.channel = channel }
        let qmp: QMPClient
        do {
            qmp = try await QMPClient.connect(path: commandLine.qmpSocket, machine: name, stillStarting: { process.exitStatus == nil })
        } catch where error.kind == .cancelled {
            throw error
        } catch {
            if let status = process.exitStatus {
                _ = try? await withDeadline(seconds: 1) { for pump in pumps { await pump.value } }
                throw VouchError(.bootFailed, "QEMU exited (\(status)) before the guest started", machine: name,
                                 outputTail: tail(collector.text), cause: error)
            }
            let note = process.stateNote(as: "QEMU").map { "; \($0)" } ?? ""
            throw VouchError(.bootFailed, "QEMU (pid \(process.pid)) did not answer on its QMP socket\(note)", machine: name,
                             outputTail: tail(collector.text), cause: error)
        }
        await qmp.setEventHandler { [weak self] event in self?.handle(event) }
        state.withLock { $0.qmp = qmp }
        context.log.debug("QMP ready", machine: name)
        return channel
    }

    /// The qcow2 overlay that takes every write, so the image stays pristine.
    private func makeOverlay(over disk: String) async throws(VouchError) -> String {
        let overlay = context.stateDirectory + "/root.qcow2"
        // A machine started again after a crash or shutdown keeps its disk.
        if FileManager.default.fileExists(atPath: overlay) { return overlay }
        try await qemuImg(["create", "-q", "-f", "qcow2", "-F", "raw", "-b", disk, overlay], what: "create the disk overlay")
        return overlay
    }

    /// Runs qemu-img.
    /// - Throws: `.bootFailed` with its output.
    func qemuImg(_ args: [String], what: String) async throws(VouchError) {
        let (status, output) = try await ChildProcess.run("qemu-img", args)
        guard status == .exited(0) else {
            throw VouchError(.bootFailed, "qemu-img could not \(what) (\(status))", machine: context.name, outputTail: tail(output))
        }
    }

    func waitForExit() async throws(VouchError) -> ExitStatus {
        guard let (process, pumps) = state.withLock({ s in s.process.map { ($0, s.pumps) } }) else {
            throw VouchError(.bootFailed, "QEMU was never started", machine: context.name)
        }
        let status = try await process.waitForExit()
        // Report the exit only once the console is complete: callers quote its
        // tail (a kernel panic) right after.
        _ = try? await withDeadline(seconds: 1) { for pump in pumps { await pump.value } }
        return status
    }

    /// QEMU's own error output (not the guest's), for error messages.
    var qemuErrors: String { stderrText.text }

    func diagnose() async -> String? {
        guard let process = state.withLock({ $0.process }), process.exitStatus == nil else { return nil }
        if let note = process.stateNote(as: "QEMU") { return note }
        guard let qmp = state.withLock({ $0.qmp }) else { return nil }
        do {
            let status = try await qmp.execute("query-status", timeout: 1)
            let run = status["status"]?.stringValue ?? "unknown"
            return run == "running" ? nil : "QEMU says the guest is \(run)"
        } catch {
            return "QEMU (pid \(process.pid)) does not answer QMP: \(error.message)"
        }
    }

    // MARK: - Capabilities

    func allowReboot(_ allowed: Bool) async throws(VouchError) {
        try await qmp().execute("set-action", ["reboot": .string(allowed ? "reset" : "shutdown")])
    }

    func forwardPort(hostPort: Int, guestPort: Int) async throws(VouchError) {
        if let network = context.network, let enter = network.enterNamespace() {
            // QEMU runs in the test's namespace: relay from the host into it.
            guard let target = network.attachments.first?.nic.ipv4 else {
                throw VouchError(.unsupported, "forwardPort on a TAP network needs the machine on a VLAN", machine: context.name)
            }
            let forwarder: PortForwarder
            do {
                forwarder = try PortForwarder(hostPort: hostPort, address: target, port: guestPort, enter: enter)
            } catch {
                throw VouchError(.other, "cannot forward 127.0.0.1:\(hostPort)", machine: context.name, cause: error)
            }
            state.withLock {
                $0.forwarders.append(forwarder)
                $0.forwards.append((hostPort, guestPort))
            }
            return
        }
        // Vouch's own VMs have a user-mode card named "forward" for this; a
        // start script's VM has nixpkgs' user-mode card, the default hub.
        var target = ""
        if case .direct = config.boot { target = "forward " }
        let reply = try await qmp().execute(
            "human-monitor-command", ["command-line": .string("hostfwd_add \(target)tcp:127.0.0.1:\(hostPort)-:\(guestPort)")])
        if let text = reply.stringValue, !text.isEmpty {
            throw VouchError(.other, "QEMU refused the port forward \(hostPort) -> \(guestPort): \(text.trimmingTrailingNewlines())",
                             machine: context.name)
        }
        state.withLock { $0.forwards.append((hostPort, guestPort)) }
    }

    func setLinks(up: Bool) async throws(VouchError) {
        let qmp = try qmp()
        for attachment in context.network?.attachments ?? [] {
            try await qmp.execute("set_link", ["name": .string(attachment.nic.netdev), "up": .bool(up)])
        }
        state.withLock { $0.linksDown = !up }
    }

    func crash() async throws(VouchError) {
        let process = state.withLock { $0.process }
        if let qmp = state.withLock({ $0.qmp }) { _ = try? await qmp.execute("quit", timeout: 2) }
        if let process, (try? await process.waitForExit(until: Deadline(seconds: 3))) == nil { await process.kill() }
        _ = try? await withDeadline(seconds: 2) { () throws(VouchError) in _ = try await self.waitForExit() }
    }

    func sendKeys(_ keys: [String]) async throws(VouchError) {
        // QEMU key names, or raw scancodes as `0x..` (as HMP's sendkey takes them).
        let list = keys.map { key -> JSONValue in
            if key.hasPrefix("0x"), let code = Int(key.dropFirst(2), radix: 16) {
                return .object(["type": "number", "data": .number(Double(code))])
            }
            return .object(["type": "qcode", "data": .string(key)])
        }
        try await qmp().execute("send-key", ["keys": .array(list)])
    }

    func monitorCommand(_ command: String) async throws(VouchError) -> String {
        try await asked(hmp: command) { () throws(VouchError) in
            try await qmp().execute("human-monitor-command", ["command-line": .string(command)]).stringValue ?? ""
        }
    }

    /// Runs `body`, which sends a monitor command the script asked for: a
    /// `stop` among them is a pause Vouch asked for, not a fault.
    private func asked<T>(hmp command: String? = nil, qmp: String? = nil, _ body: () async throws(VouchError) -> T) async throws(VouchError) -> T {
        let word = command?.split(separator: " ").first.map(String.init) ?? qmp ?? ""
        let stops = ["stop", "s"].contains(word), resumes = ["cont", "c"].contains(word)
        if stops { state.withLock { $0.pausing = true } }
        let result = try await body()
        if resumes { state.withLock { $0.pausing = false } }
        return result
    }

    func monitorTranscript(_ command: String) async throws(VouchError) -> String {
        let monitor: HumanMonitorClient
        if let connected = state.withLock({ $0.monitor }) {
            monitor = connected
        } else {
            _ = try qmp()  // QEMU is running
            monitor = try await HumanMonitorClient.connect(path: QEMUCommandLine.monitorSocket(in: context.stateDirectory), machine: context.name)
            let raced = state.withLock { s -> HumanMonitorClient? in
                if let other = s.monitor { return other }
                s.monitor = monitor
                return nil
            }
            if let raced { monitor.close(); return try await asked(hmp: command) { () throws(VouchError) in try await raced.transcript(command) } }
        }
        return try await asked(hmp: command) { () throws(VouchError) in try await monitor.transcript(command) }
    }

    func qmpReply(_ command: String, arguments: JSONValue?) async throws(VouchError) -> JSONValue {
        try await asked(qmp: command) { () throws(VouchError) in try await qmp().reply(command, arguments) }
    }

    func nextQMPEvent(timeout: Double) async throws(VouchError) -> JSONValue? {
        try await qmp().nextScriptEvent(timeout: timeout)
    }

    func qmp() throws(VouchError) -> QMPClient {
        guard let qmp = state.withLock({ $0.qmp }) else {
            throw VouchError(.machineDown, "QEMU is not running", machine: context.name)
        }
        return qmp
    }

    // MARK: - Teardown

    func stop(keepState: Bool) async {
        state.withLock { $0.stopped = true }
        await endProcess()
        if !keepState { try? FileManager.default.removeItem(atPath: context.stateDirectory) }
    }

    /// Ends the QEMU process and its sockets and pumps, keeping the state
    /// directory, so the backend can launch again (a snapshot restore).
    /// `discard`: the guest's state is thrown away, so QEMU is killed at once
    /// instead of asked to quit. Bounded: about 3 s when QEMU is frozen.
    func endProcess(discard: Bool = false) async {
        let (process, qmp, channel, pumps, forwarders, monitor) = state.withLock { s in
            defer {
                s.forwarders.removeAll()
                s.qmp = nil
                s.monitor = nil
                s.channel = nil
            }
            return (s.process, s.qmp, s.channel, s.pumps, s.forwarders, s.monitor)
        }
        monitor?.close()
        for forwarder in forwarders { await forwarder.stop() }
        if let process, process.exitStatus == nil {
            if discard || process.stateNote(as: "QEMU") != nil {
                await process.kill()
            } else {
                if let qmp { _ = try? await qmp.execute("quit", timeout: 1) }
                if (try? await process.waitForExit(until: Deadline(seconds: 1))) == nil {
                    await process.terminate(grace: 1)
                }
            }
        }
        await qmp?.close()
        channel?.close()
        _ = try? await withDeadline(seconds: 1) { for pump in pumps { await pump.value } }
    }
}
