import Foundation
import Glibc
import Synchronization
import VouchGuest
import VouchSupport

/// Drives an existing host over the system's OpenSSH client, so the user's
/// ssh config, agent and keys apply.
///
/// One control master carries everything: the backdoor session (a bash on a
/// remote pty, framed by `GuestShell` exactly like a VM's console), the
/// stderr stream, file copies (tar through the master) and port forwards.
/// `start` fails with ssh's own words when the host is unreachable, refuses
/// the key or does not know it. It is someone's machine: `shutdown` and
/// `reboot` work only with `allowPowerControl`, and it has no `crash`.
final class SSHBackend: Backend, PowerControl, PortForwarding, FileTransfer {
    let kind = "ssh"
    let context: MachineContext
    let settings: SSHSettings
    let commandLine: SSHCommandLine
    /// Per-run directory on the remote host (shared files, stderr), removed by `stop`.
    let remoteDirectory: String

    private struct State {
        var master: ChildProcess?
        var session: ChildProcess?
        var tail: ChildProcess?
        var supervisor: Task<Void, Never>?
        var pumps: [Task<Void, Never>] = []
        var rebootAllowed = false
        var stopped = false
    }

    private let state = Mutex(State())
    private let relay = SessionRelay()
    private let exit = OneShot<ExitStatus>()

    init(context: MachineContext, settings: SSHSettings) {
        self.context = context
        self.settings = settings
        self.commandLine = SSHCommandLine(settings: settings, controlPath: context.stateDirectory + "/cm")
        self.remoteDirectory = "/tmp/vouch-ssh-" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
    }

    var exitStatus: ExitStatus? { exit.value }

    var target: String {
        (settings.user.map { $0 + "@" } ?? "") + settings.host + (settings.port.map { ":\($0)" } ?? "")
    }

    func start() async throws(VouchError) -> GuestChannel {
        try vouching("cannot create the state directory \(context.stateDirectory)", machine: context.name) {
            try FileManager.default.createDirectory(atPath: context.stateDirectory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        }
        try await connectMaster()
        let session = try openSession()
        let task = Task { await self.supervise(first: session) }
        state.withLock { $0.supervisor = task }
        context.health.watch(relay.input)
        return relay.channel
    }

    /// Starts the control master and waits until it answers `-O check`.
    /// - Throws: `VouchError.bootFailed` saying whether the host is unreachable,
    ///   refused the authentication or has an unaccepted key, with ssh's stderr.
    private func connectMaster() async throws(VouchError) {
        let master = try ChildProcess("ssh", commandLine.master())
        let errors = OutputCollector()
        let pump = Task { await errors.drain(master.stderr!.queue) }
        state.withLock { s in
            s.master = master
            s.pumps.append(pump)
        }
        context.log.log("connecting to \(target) (ssh control master pid \(master.pid))", machine: context.name)
        let deadline = Deadline(seconds: 60)
        while !deadline.hasPassed {
            if let status = master.exitStatus {
                _ = try? await withDeadline(seconds: 1) { await pump.value }
                let text = errors.text
                throw VouchError(.bootFailed, "cannot connect to \(target): \(SSHCommandLine.diagnose(text)) (ssh \(status))",
                                 machine: context.name, outputTail: tail(text))
            }
            let (status, _) = try await ChildProcess.run("ssh", commandLine.check(), timeout: 15)
            if status == .exited(0) { return }
            do { try await delay(0.05) } catch {
                await master.terminate(grace: 1)
                throw error
            }
        }
        await master.terminate(grace: 1)
        throw VouchError(.bootFailed, "cannot connect to \(target): no answer within 60 s", machine: context.name,
                         outputTail: tail(errors.text))
    }

    private func openSession() throws(VouchError) -> ChildProcess {
        let session = try ChildProcess("ssh", commandLine.session(remoteDirectory: remoteDirectory),
                                       pipes: [.stdin, .stdout, .stderr])
        let errors = context.console.pump(session.stderr!.queue)
        state.withLock { s in
            s.session = session
            s.pumps.append(errors)
        }
        if state.withLock({ $0.tail == nil }), let tail = try? ChildProcess("ssh", commandLine.stderrTail(remoteDirectory: remoteDirectory)) {
            let pump = context.console.pump(tail.stdout!.queue)
            state.withLock { s in
                s.tail = tail
                s.pumps.append(pump)
            }
        }
        return session
    }

    /// Carries each session into the relay; after a permitted reboot, waits
    /// for the host to come back and opens a new one.
    private func supervise(first: ChildProcess) async {
        var session = first
        while true {
            if let fd = session.stdinFD { await relay.carry(session.stdout!.queue, writingTo: fd) }
            let status = await session.terminate(grace: 0.5) ?? .signaled(SIGKILL)
            let (reboot, stopped) = state.withLock { ($0.rebootAllowed, $0.stopped) }
            guard reboot, !stopped, !Task.isCancelled else {
                relay.finish()
                exit.set(status)
                return
            }
            context.log.log("session ended (\(status)); waiting for \(target) to come back", machine: context.name)
            let old = state.withLock { s in defer { s.master = nil; s.tail = nil }; return (s.master, s.tail) }
            if let master = old.0 { await master.terminate(grace: 0.5) }
            if let tail = old.1 { await tail.terminate(grace: 0.5) }
            while !Task.isCancelled {
                do {
                    try await connectMaster()
                    session = try openSession()
                    break
                } catch {
                    context.log.debug("not back yet: \(error)", machine: context.name)
                    try? await delay(1)
                }
            }
            if Task.isCancelled {
                relay.finish()
                exit.set(status)
                return
            }
        }
    }

    func waitForExit() async throws(VouchError) -> ExitStatus {
        switch await exit.wait() {
        case .value(let status): return status
        case .timedOut, .cancelled: throw VouchError.cancelled(machine: context.name)
        }
    }

    func diagnose() async -> String? {
        state.withLock { $0.session }?.stateNote(as: "the ssh session")
    }

    func permit(_ operation: PowerOperation) throws(VouchError) {
        guard settings.allowPowerControl else {
            throw VouchError(.unsupported, "\(operation.rawValue) is not allowed on \(target): it is an existing host"
                             + " (set \"allowPowerControl\": true in the machine's spec to allow it)", machine: context.name)
        }
    }

    var guestSharedDirectory: String { remoteDirectory + "/shared" }

    /// Copies the staged item to the host with tar through the master.
    func pushShared(_ item: String, shell: GuestShell) async throws(VouchError) {
        let remote = "tar -C \(shellQuote(guestSharedDirectory)) -xf -"
        try await pipe("tar -C \(shellQuote(context.sharedDirectory)) -cf - \(shellQuote(item)) | "
                       + (["ssh"] + commandLine.run(remote)).map(shellQuote).joined(separator: " "), what: "copy \(item) to")
    }

    /// Copies the item back with tar through the master, and removes it remotely.
    func pullShared(_ item: String, shell: GuestShell) async throws(VouchError) {
        let dir = shellQuote(guestSharedDirectory), name = shellQuote(item)
        let remote = "tar -C \(dir) -cf - \(name) && rm -rf \(dir)/\(name)"
        try await pipe((["ssh"] + commandLine.run(remote)).map(shellQuote).joined(separator: " ")
                       + " | tar -C \(shellQuote(context.sharedDirectory)) -xf -", what: "copy \(item) from")
    }

    private func pipe(_ script: String, what: String) async throws(VouchError) {
        let (status, output) = try await ChildProcess.run("bash", ["-c", "set -o pipefail; " + script], timeout: 600)
        guard status == .exited(0) else {
            throw VouchError(.other, "cannot \(what) \(target) (\(status))", machine: context.name, outputTail: tail(output))
        }
    }

    func allowReboot(_ allowed: Bool) async throws(VouchError) {
        state.withLock { $0.rebootAllowed = allowed }
    }

    /// An ssh local forward on the master: 127.0.0.1:hostPort → the host's 127.0.0.1:guestPort.
    func forwardPort(hostPort: Int, guestPort: Int) async throws(VouchError) {
        let (status, output) = try await ChildProcess.run("ssh", commandLine.forward(hostPort: hostPort, guestPort: guestPort), timeout: 15)
        guard status == .exited(0) else {
            throw VouchError(.other, "ssh refused the port forward \(hostPort) -> \(guestPort) (\(status))",
                             machine: context.name, outputTail: tail(output))
        }
    }

    func stop(keepState: Bool) async {
        let (master, session, tailProcess, supervisor, pumps) = state.withLock { s in
            s.stopped = true
            s.rebootAllowed = false
            defer { s.pumps.removeAll() }
            return (s.master, s.session, s.tail, s.supervisor, s.pumps)
        }
        supervisor?.cancel()
        if let master, master.exitStatus == nil {
            _ = try? await ChildProcess.run("ssh", commandLine.run("rm -rf \(shellQuote(remoteDirectory))"), timeout: 3)
        }
        if let session { _ = await session.terminate(grace: 0.5) }
        if let tailProcess { _ = await tailProcess.terminate(grace: 0.5) }
        if let master, master.exitStatus == nil {
            _ = try? await ChildProcess.run("ssh", commandLine.exitMaster(), timeout: 2)
            _ = await master.terminate(grace: 1)
        }
        if let supervisor { _ = try? await withDeadline(seconds: 3) { await supervisor.value } }
        for pump in pumps { _ = try? await withDeadline(seconds: 1) { await pump.value } }
        relay.finish()
        if exit.value == nil { exit.set(session?.exitStatus ?? .exited(-1)) }
        if !keepState { try? FileManager.default.removeItem(atPath: context.stateDirectory) }
    }
}
