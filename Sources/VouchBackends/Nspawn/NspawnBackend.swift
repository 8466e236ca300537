import Foundation
import Glibc
import Synchronization
import VouchGuest
import VouchSupport

/// Runs a machine as a systemd-nspawn container: the image's root
/// filesystem under a throwaway overlay, booted with its own systemd.
///
/// The guest shell is a bash that `nsenter` starts in all of the container
/// init's namespaces, on a pty whose master Vouch holds: the same tty
/// semantics as a VM's virtconsole (raw mode, ^C interrupts the command), so
/// `GuestShell` framing is reused unchanged. The session waits for the ready
/// unit before printing the banner, so "connected" means "booted".
///
/// On a TAP network the container runs in the test's network namespace with
/// one veth per VLAN on that VLAN's bridge; `block()` sets the host ends down.
/// A reboot ends nspawn; with `allowReboot` Vouch starts it again (a fresh
/// overlay: containers keep no state across reboots or crashes).
///
/// With a nixpkgs start script (`run-NAME-nspawn`), the script runs nspawn
/// itself, under the same wrapper, and `start()` follows its stdout contract
/// (`NspawnStartScript`) before the shell is opened the same way.
final class NspawnBackend: Backend, PowerControl, Crashable, LinkControl, PortForwarding, FileTransfer {
    /// What the container boots.
    enum Source: Sendable {
        /// A root filesystem directory that Vouch boots with its own nspawn command line.
        case root(String)
        /// A nixpkgs `run-NAME-nspawn` script that execs nspawn itself.
        case startScript(String)
    }

    let kind = "nspawn"
    let context: MachineContext
    let source: Source
    let readyUnit: String
    let extraArgs: [String]
    /// Seconds a start script has to print its PID line and boot.
    let bootTimeout: Double

    private struct State {
        var nspawn: ChildProcess?
        var session: ChildProcess?
        var initPID: pid_t?
        /// Every container init and nspawn seen, to wait for their end on stop/crash.
        var containerPIDs: [pid_t] = []
        var supervisor: Task<Void, Never>?
        var pumps: [Task<Void, Never>] = []
        var forwarders: [PortForwarder] = []
        var rebootAllowed = false
        var stopped = false
        /// The machine names the containers ran under (a start script picks
        /// its own, maybe a new one per boot), to clean up after them.
        var machineNames: Set<String> = []
    }

    private let state = Mutex(State())
    private let relay = SessionRelay()
    private let exit = OneShot<ExitStatus>()
    private let token = String(UInt32.random(in: 0...UInt32.max), radix: 16)
    /// The markers on a start script's stdout (unused for a root directory).
    let watcher = StartScriptWatcher()

    init(context: MachineContext, source: Source, readyUnit: String, extraArgs: [String], bootTimeout: Double = 300) {
        self.context = context
        self.source = source
        self.readyUnit = readyUnit
        self.extraArgs = extraArgs
        self.bootTimeout = bootTimeout
    }

    var exitStatus: ExitStatus? { exit.value }

    /// Remembers the machine name the nspawn `pid` runs under, to remove
    /// what nspawn leaves in /run for it once the container is gone.
    func recordMachineName(ofNspawn pid: pid_t?) {
        guard let pid, let name = NspawnHost.machineName(ofNspawn: pid) else { return }
        state.withLock { _ = $0.machineNames.insert(name) }
    }

    func start() async throws(VouchError) -> GuestChannel {
        var root: String?
        if case .root(let directory) = source { root = directory }
        try NspawnHost.check(rootDirectory: root, machine: context.name)
        try vouching("cannot create the state directory \(context.stateDirectory)", machine: context.name) {
            try FileManager.default.createDirectory(atPath: context.stateDirectory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
            try FileManager.default.createDirectory(atPath: context.sharedDirectory, withIntermediateDirectories: true)
        }
        let nspawn = try await spawnContainer()
        if case .startScript(let script) = source {
            do { try await awaitStartScript(script, process: nspawn) } catch {
                await stop(keepState: true)
                throw error
            }
        }
        let task = Task { await self.supervise(first: nspawn) }
        state.withLock { $0.supervisor = task }
        context.health.watch(relay.input)
        return relay.channel
    }

    /// Creates the veths and starts `systemd-nspawn` (again, after a reboot).
    private func spawnContainer() async throws(VouchError) -> ChildProcess {
        guard case .root(let rootDirectory) = source else { return try spawnStartScript() }
        let name = context.name
        var commandLine = NspawnCommandLine(
            rootDirectory: rootDirectory, hostname: HostName.forNode(name),
            machineName: NspawnCommandLine.machineName(for: name, token: token),
            sharedDirectory: context.sharedDirectory, extraArgs: extraArgs)
        let enter = context.network?.enterNamespace()
        if let network = context.network {
            let file = context.stateDirectory + "/network-parameters"
            let parameters = NspawnCommandLine.networkParameters(
                nics: network.attachments.map(\.nic), planParameters: network.kernelParameters)
            try vouching("cannot write \(file)", machine: name) { try parameters.write(toFile: file, atomically: true, encoding: .utf8) }
            commandLine.networkParametersFile = file
            if let enter {
                for attachment in network.attachments {
                    commandLine.interfaces.append(try await makeVeth(attachment.nic, enter: enter))
                }
            }
        }
        let args = commandLine.arguments()
        let wrapped = NspawnCommandLine.wrapped(args, networkNamespace: enter != nil)
        let argv = enter.map { ["nsenter"] + $0 + wrapped } ?? wrapped
        let process = try ChildProcess(argv[0], Array(argv.dropFirst()))
        let pumps = [process.stdout!, process.stderr!].map { context.console.pump($0.queue) }
        state.withLock { s in
            s.nspawn = process
            s.pumps += pumps
        }
        context.log.log("started systemd-nspawn (pid \(process.pid))" + (enter == nil ? "" : " in the test's network namespace"),
                        machine: name)
        context.log.debug("command line: systemd-nspawn \(args.joined(separator: " "))", machine: name)
        return process
    }

    /// Starts the nixpkgs start script, which execs nspawn itself and wires
    /// its own network. It runs in the test's network namespace when there
    /// is one, so the bridges of a TAP network are where it looks for them.
    private func spawnStartScript() throws(VouchError) -> ChildProcess {
        guard case .startScript(let script) = source else { preconditionFailure("not a start-script container") }
        watcher.reset()
        let enter = context.network?.enterNamespace()
        let wrapped = NspawnCommandLine.wrapped([], networkNamespace: enter != nil, program: script)
        let env = NspawnStartScript.environment(base: ProcessInfo.processInfo.environment,
                                                stateDirectory: context.stateDirectory, sharedDirectory: context.sharedDirectory)
        let argv = enter.map { ["nsenter"] + $0 + wrapped } ?? wrapped
        let process = try ChildProcess(argv[0], Array(argv.dropFirst()), environment: env, pipes: [.stdin, .stdout, .stderr])
        let watcher = self.watcher
        let pumps = [
            context.console.pump(process.stdout!.queue, also: { watcher.feed($0) }),
            context.console.pump(process.stderr!.queue),
        ]
        state.withLock { s in
            s.nspawn = process
            s.pumps += pumps
        }
        context.log.log("started \(script) (pid \(process.pid))" + (enter == nil ? "" : " in the test's network namespace"),
                        machine: context.name)
        return process
    }

    /// A veth pair whose host end is on VLAN `nic.vlan`'s bridge and whose
    /// container end has the node's MAC (the guest configures NICs by MAC).
    private func makeVeth(_ nic: NetworkPlan.NIC, enter: [String]) async throws(VouchError) -> String {
        let node = Int(nic.mac.split(separator: ":").last.flatMap { Int($0, radix: 16) } ?? 0)
        let (host, guest) = NspawnCommandLine.vethNames(node: node, vlan: nic.vlan)
        _ = try? await ip(["link", "del", host], enter: enter)  // left by a previous boot
        try await ip(["link", "add", host, "type", "veth", "peer", "name", guest], enter: enter)
        try await ip(["link", "set", guest, "address", nic.mac], enter: enter)
        try await ip(["link", "set", host, "master", "br\(nic.vlan)", "up"], enter: enter)
        return guest
    }

    private func ip(_ args: [String], enter: [String]) async throws(VouchError) {
        let (status, output) = try await ChildProcess.run("nsenter", enter + ["ip"] + args, timeout: 10)
        guard status == .exited(0) else {
            throw VouchError(.other, "ip \(args.joined(separator: " ")) failed in the test network namespace (\(status))",
                             machine: context.name, outputTail: tail(output))
        }
    }

    /// Keeps a shell session open into whichever container is running, and
    /// restarts the container after a reboot if allowed.
    private func supervise(first: ChildProcess) async {
        var nspawn = first
        while !Task.isCancelled {
            if nspawn.exitStatus == nil, let initPID = NspawnHost.initPID(under: nspawn.pid) {
                let nspawnPID = NspawnHost.parent(of: initPID)
                recordMachineName(ofNspawn: nspawnPID)
                state.withLock { s in
                    s.initPID = initPID
                    s.containerPIDs += [initPID] + (nspawnPID.map { [$0] } ?? [])
                }
                do {
                    try await runSession(initPID: initPID)
                } catch {
                    context.log.warning("cannot open a shell in the container: \(error)", machine: context.name)
                }
                // A session into a dying init ends at once: do not spin.
                try? await delay(0.1)
                continue
            }
            if let status = nspawn.exitStatus {
                let (reboot, stopped) = state.withLock { ($0.rebootAllowed, $0.stopped) }
                if reboot, !stopped {
                    context.log.log("container ended (\(status)); starting it again (reboot)", machine: context.name)
                    do {
                        nspawn = try await spawnContainer()
                        continue
                    } catch {
                        context.log.error("cannot restart the container: \(error)", machine: context.name)
                    }
                }
                relay.finish()
                exit.set(status)
                return
            }
            try? await delay(0.02)
        }
        relay.finish()
        exit.set(nspawn.exitStatus ?? .exited(-1))
    }

    /// One backdoor session; returns when it ends (reboot, poweroff, stop).
    private func runSession(initPID: pid_t) async throws(VouchError) {
        let (master, slave) = try PTY.open()
        let env = [
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root", "USER": "root", "PAGER": "", "TERM": "dumb",
        ]
        let session: ChildProcess
        do throws(VouchError) {
            session = try ChildProcess("nsenter", NspawnCommandLine.sessionArguments(initPID: initPID, readyUnit: readyUnit),
                                       environment: env, pipes: [.stderr], stdoutFD: slave)
        } catch {
            close(master)
            close(slave)
            throw error
        }
        close(slave)
        state.withLock { $0.session = session }
        context.log.debug("shell session into container init \(initPID) (nsenter pid \(session.pid))", machine: context.name)
        let errors = context.console.pump(session.stderr!.queue)
        let writeFD = dup(master)
        let reader = FDReader(fd: master, name: "nspawn-\(context.name)")
        await relay.carry(reader.queue, writingTo: writeFD)
        _ = await session.terminate(grace: 0.5)
        close(writeFD)
        _ = try? await withDeadline(seconds: 1) { await errors.value }
    }

    func waitForExit() async throws(VouchError) -> ExitStatus {
        switch await exit.wait() {
        case .value(let status): return status
        case .timedOut, .cancelled: throw VouchError.cancelled(machine: context.name)
        }
    }

    func diagnose() async -> String? {
        state.withLock { $0.nspawn }?.stateNote(as: "systemd-nspawn")
    }

    func allowReboot(_ allowed: Bool) async throws(VouchError) {
        state.withLock { $0.rebootAllowed = allowed }
    }

    func setLinks(up: Bool) async throws(VouchError) {
        guard let network = context.network, !network.attachments.isEmpty, let enter = network.enterNamespace() else { return }
        for attachment in network.attachments {
            let node = Int(attachment.nic.mac.split(separator: ":").last.flatMap { Int($0, radix: 16) } ?? 0)
            let host = NspawnCommandLine.vethNames(node: node, vlan: attachment.nic.vlan).host
            try await ip(["link", "set", host, up ? "up" : "down"], enter: enter)
        }
    }

    /// Listens on the host's loopback and relays into the container's own
    /// network namespace, to 127.0.0.1 there: works with or without VLANs.
    func forwardPort(hostPort: Int, guestPort: Int) async throws(VouchError) {
        guard let initPID = state.withLock({ $0.initPID }) else {
            throw VouchError(.machineDown, "the container is not running", machine: context.name)
        }
        let forwarder: PortForwarder
        do {
            forwarder = try PortForwarder(hostPort: hostPort, address: "127.0.0.1", port: guestPort,
                                          enter: ["-t", "\(initPID)", "-n", "--"])
        } catch {
            throw VouchError(.other, "cannot forward 127.0.0.1:\(hostPort)", machine: context.name, cause: error)
        }
        state.withLock { $0.forwarders.append(forwarder) }
    }

    /// Kills the container outright; its overlay goes with it.
    func crash() async throws(VouchError) {
        state.withLock { $0.rebootAllowed = false }
        state.withLock { $0.nspawn }?.signal(SIGKILL)
        _ = await exit.wait(until: Deadline(seconds: 5))
        await NspawnHost.waitGone(state.withLock { $0.containerPIDs }, seconds: 5)
    }

    func stop(keepState: Bool) async {
        let (nspawn, session, supervisor, pumps, forwarders) = state.withLock { s in
            s.stopped = true
            s.rebootAllowed = false
            defer { s.forwarders.removeAll(); s.pumps.removeAll() }
            return (s.nspawn, s.session, s.supervisor, s.pumps, s.forwarders)
        }
        for forwarder in forwarders { await forwarder.stop() }
        supervisor?.cancel()
        if let session { _ = await session.terminate(grace: 0.5) }
        // SIGTERM asks nspawn to halt the container; KILL after the grace.
        if let nspawn, nspawn.exitStatus == nil { _ = await nspawn.terminate(grace: 1) }
        if let supervisor { _ = try? await withDeadline(seconds: 3) { await supervisor.value } }
        for pump in pumps { _ = try? await withDeadline(seconds: 1) { await pump.value } }
        relay.finish()
        if exit.value == nil { exit.set(nspawn?.exitStatus ?? .exited(-1)) }
        await NspawnHost.waitGone(state.withLock { $0.containerPIDs }, seconds: 5)
        for name in state.withLock({ $0.machineNames }) { NspawnHost.removePropagationDirectory(machineName: name) }
        if let enter = context.network?.enterNamespace() {
            for attachment in context.network?.attachments ?? [] {
                let node = Int(attachment.nic.mac.split(separator: ":").last.flatMap { Int($0, radix: 16) } ?? 0)
                let host = NspawnCommandLine.vethNames(node: node, vlan: attachment.nic.vlan).host
                _ = try? await self.ip(["link", "del", host], enter: enter)
            }
        }
        if !keepState { try? FileManager.default.removeItem(atPath: context.stateDirectory) }
    }
}
