import Foundation
import Glibc
import Synchronization
import VouchBackends
import VouchGuest
import VouchSupport

/// Options for one run, as the CLI passes them.
public struct RunOptions: Sendable {
    /// Where the log, JUnit file, console logs and copied files go.
    public var outputDirectory: URL
    /// Where to write the JUnit XML report as well (it always goes to the output directory).
    public var junitXML: URL?
    /// Keep machine state directories (`-K`).
    public var keepState = false
    /// Overrides the spec's global timeout.
    public var globalTimeout: Double?
    /// Overrides every machine's accelerator.
    public var accelerator: Accelerator.Choice?
    /// Log to the file only (unit tests).
    public var quiet = false
    /// For `"network": "tap"`: build the namespace inside a user namespace
    /// (true), directly (false), or by privilege (nil: only when not root).
    public var userNamespaceNetwork: Bool?
    /// Boot each machine from a cached snapshot of an earlier run's boot,
    /// or boot it and cache one (`--snapshot-after-boot`).
    public var snapshotAfterBoot = false
    /// Where boot snapshots are cached (default `SnapshotCache.defaultRoot`).
    public var snapshotCacheDirectory: String?
    /// Where the run's private directory goes (default `$XDG_RUNTIME_DIR`, else `$TMPDIR`, else /tmp).
    public var temporaryDirectory: String?
    /// The script's language, whose variables the node names must make (checked up front).
    public var scriptLanguage: NodeNames.ScriptLanguage?

    /// Options with defaults for everything but the output directory.
    public init(outputDirectory: URL) {
        self.outputDirectory = outputDirectory
    }
}

/// How a run ended, and the process exit status that says so.
public enum RunOutcome: Sendable, Equatable {
    case passed
    case failed(String)
    case timedOut
    case interrupted

    /// 0, 1, 143 (global timeout, as nixpkgs) or 130 (interrupted).
    public var exitStatus: Int32 {
        switch self {
        case .passed: 0
        case .failed: 1
        case .timedOut: 143
        case .interrupted: 130
        }
    }
}

/// Owns a test run: its machines, run directory, log and report.
///
/// `run` executes a script under the global timeout and always tears down,
/// whether the script passed, failed, timed out or was cancelled (Ctrl-C):
/// every machine process ends and the run directory is removed, within
/// `teardownLimit` seconds whatever the guests and VMMs do.
public final class Driver: Sendable {
    @TaskLocal public static var current: Driver?

    /// The test being run.
    public let spec: TestSpec
    /// How it is being run.
    public let options: RunOptions
    /// The test log (terminal and `vouch.log`).
    public let log: TestLog
    /// The JUnit report the subtests are recorded in.
    public let junit: JUnitReport
    /// The machines, in name order (those of the spec, then any made with `createMachine`).
    public var machines: [Machine] { machineList.withLock { $0 } }
    private let machineList = Mutex<[Machine]>([])
    private let snapshotCache: SnapshotCache?
    /// This run's private directory (0700): machine state, sockets, shared dir.
    public let runDirectory: String
    /// Node numbers, MACs and addresses of every machine.
    public let network: NetworkPlan
    private let switches = Mutex<[VDESwitch]>([])
    /// The namespace holder's pid, for machines to enter (TAP networks).
    private let namespaceBox: NamespaceBox
    private let outputLock: OutputLock
    private let tornDown = Mutex(false)

    /// Seconds teardown may take in all before every child is killed.
    public static let teardownLimit = 5.0

    /// Validates `spec` and prepares the run; boots nothing.
    /// - Throws: `.invalidSpec` / `.missingImage` / `.unsupported` before
    ///   anything is started, and when another live run uses the output directory.
    public init(spec: TestSpec, options: RunOptions) throws(VouchError) {
        let plans = try spec.plans(accelerator: options.accelerator, script: options.scriptLanguage)
        let network = try NetworkPlan(machines: spec.machines.map { ($0.name, $0.vlans) })
        let fm = FileManager.default
        try vouching("cannot create the output directory \(options.outputDirectory.path)") {
            try fm.createDirectory(at: options.outputDirectory, withIntermediateDirectories: true)
        }
        let lock = try OutputLock(directory: options.outputDirectory)
        let runDirectory: String
        do {
            runDirectory = try Driver.makeRunDirectory(in: options.temporaryDirectory, longestName: spec.machines.map(\.name.utf8.count).max() ?? 0)
        } catch {
            lock.release()
            throw error
        }
        self.outputLock = lock
        self.spec = spec
        self.options = options
        self.log = TestLog(file: options.outputDirectory.appendingPathComponent("vouch.log"), quiet: options.quiet)
        self.junit = JUnitReport(suiteName: spec.name)
        self.network = network
        let namespaceBox = NamespaceBox()
        self.namespaceBox = namespaceBox
        self.runDirectory = runDirectory
        try? fm.createDirectory(atPath: runDirectory + "/shared-xchg", withIntermediateDirectories: true)
        self.snapshotCache = options.snapshotAfterBoot || spec.snapshotAfterBoot ? SnapshotCache(root: options.snapshotCacheDirectory) : nil
        machineList.withLock { list in
            list = plans.map { makeMachine($0.0, plan: $0.1, provider: $0.2) }
        }
        Driver.live.withLock { $0[ObjectIdentifier(self)] = runDirectory }
    }

    private func makeMachine(_ m: MachineSpec, plan: BackendPlan, provider: any BackendProvider) -> Machine {
        let consoleFile = options.outputDirectory.appendingPathComponent("console-\(m.name).log")
        var context = MachineContext(
            name: m.name, stateDirectory: runDirectory + "/vm-state-\(m.name)", sharedDirectory: runDirectory + "/shared-xchg",
            log: log, console: Console(machine: m.name, log: log, file: consoleFile))
        let namespaceBox = self.namespaceBox
        if let node = network.node(m.name) {
            let tap = spec.network == .tap
            let attachments = node.nics.map {
                MachineNetwork.Attachment(
                    nic: $0, switchDirectory: VDESwitch.socketDirectory(vlan: $0.vlan, runDirectory: runDirectory),
                    tap: tap ? NetworkNamespace.tapName(node: node.number, vlan: $0.vlan) : nil)
            }
            var machineNetwork = MachineNetwork(
                attachments: attachments, kernelParameters: network.kernelParameters(for: m.name, forwarding: true),
                forwardingMAC: NetworkPlan.forwardingMAC(node: node.number))
            if tap {
                machineNetwork.enterNamespace = { namespaceBox.value.withLock { $0?.enterArguments } }
            }
            context.network = machineNetwork
        }
        return Machine(context: context, backendName: m.backend, outputDirectory: options.outputDirectory,
                       bootTimeout: m.bootTimeout, readyUnit: plan.readyUnit, provider: provider,
                       snapshotCache: snapshotCache, makeBackend: plan.make)
    }

    /// Adds a machine booted by a nixpkgs start script while the test runs
    /// (nixpkgs' `create_machine`). It boots when first used, has no test
    /// VLANs (the start script brings its own network, if any) and is torn
    /// down with the others. The name defaults to the one in the script's
    /// file name (`run-NAME-vm`), else `machine`.
    /// - Throws: `.invalidSpec` for a bad or taken name, `.missingImage`
    ///   when the script is not an executable file.
    @discardableResult
    public func createMachine(startScript: String, name: String? = nil) throws(VouchError) -> Machine {
        let name = name ?? Driver.nameFromStartScript(startScript)
        try NodeNames.check(name, at: "create_machine")
        guard !machines.contains(where: { $0.name == name }) else {
            throw VouchError(.invalidSpec, "create_machine: a machine named '\(name)' exists already", machine: name)
        }
        try NodeNames.checkDistinct(machines.map(\.name) + [name])
        let provider = try BackendRegistry.provider(named: QEMUSettings.backend)
        guard var spec = provider.machine(name: name, startScript: startScript) else {
            throw VouchError(.unsupported, "create_machine: the qemu backend cannot run start scripts", machine: name)
        }
        spec.vlans = []
        let plan = try provider.prepare(spec, in: RunEnvironment(network: self.spec.network, accelerator: options.accelerator))
        let machine = makeMachine(spec, plan: plan, provider: provider)
        machineList.withLock { $0.append(machine) }
        log.log("created machine \(name) from \(startScript)")
        return machine
    }

    /// nixpkgs' rule: `…/run-NAME-vm` is machine NAME; anything else is `machine`.
    static func nameFromStartScript(_ path: String) -> String {
        let base = (path as NSString).lastPathComponent
        guard base.hasPrefix("run-"), base.hasSuffix("-vm"), base.count > "run--vm".count else { return "machine" }
        return String(base.dropFirst(4).dropLast(3))
    }

    deinit {
        Driver.live.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(self)) }
        outputLock.release()
    }

    /// The pid holding the test's network namespace (TAP networks, once running).
    var namespaceHolderPID: pid_t? { namespaceBox.value.withLock { $0?.pid } }

    /// The machine called `name`.
    /// - Throws: `.invalidSpec` listing the machines that exist.
    public func machine(_ name: String) throws(VouchError) -> Machine {
        guard let m = machines.first(where: { $0.name == name || $0.variableName == name }) else {
            throw VouchError(.invalidSpec, "no machine named '\(name)' (machines: \(machines.map(\.name).joined(separator: ", ")))")
        }
        return m
    }

    /// Boots every machine concurrently and waits until all shells answer.
    /// - Throws: the first machine's boot error, worded as nixpkgs' (`Failed
    ///   to start the following machines:` and `NAME: error`), keeping it as
    ///   the cause; the others are stopped at once.
    public func startAll() async throws(VouchError) {
        try await log.nested("start all VMs") { () throws(VouchError) in
            let status = BootStatus(names: machines.map(\.name), log: log)
            let ticker = Task { await status.tick() }
            defer { ticker.cancel(); status.clear() }
            let failure = await withTaskGroup(of: (String, VouchError)?.self) { group -> (String, VouchError)? in
                for machine in machines {
                    group.addTask {
                        do throws(VouchError) {
                            try await machine.start()
                            status.done(machine.name)
                            return nil
                        } catch {
                            status.failed(machine.name)
                            return (machine.name, error)
                        }
                    }
                }
                var first: (String, VouchError)?
                for await result in group {
                    guard let failed = result else { continue }
                    // One machine cannot boot: stop the others now rather
                    // than after their own boot deadlines.
                    if first == nil || first?.1.kind == .cancelled { first = failed }
                    group.cancelAll()
                }
                return first
            }
            if let (name, error) = failure {
                guard error.kind != .cancelled else { throw error }
                var wrapped = error
                wrapped.message = NixpkgsMessage.startAllFailed.format(["failures": "\(name): \(error.message)"])
                throw wrapped
            }
        }
    }

    /// Runs `script` under the global timeout, then tears down.
    /// Never throws: the outcome says how it ended, and is logged; the log
    /// and the JUnit report are written whatever happened.
    public func run(_ script: @escaping @Sendable (Driver) async throws -> Void) async -> RunOutcome {
        // A reader of our output going away (`vouch run | head`) must not kill
        // the driver before teardown: writes then fail and are dropped instead.
        signal(SIGPIPE, SIG_IGN)
        let timeout = options.globalTimeout ?? spec.globalTimeout
        let began = ContinuousClock.now
        let outcome: RunOutcome = await Driver.$current.withValue(self) {
            do throws(VouchError) {
                let finished: Void? = try await withDeadline(seconds: timeout, grace: 1) { () throws(VouchError) in
                    try await self.startVLANs()
                    do {
                        try await Driver.$current.withValue(self) { try await script(self) }
                    } catch {
                        throw VouchError.from(error, "the test script failed")
                    }
                }
                guard finished != nil else {
                    log.error("timeout reached; test terminating...")
                    return .timedOut
                }
                return .passed
            } catch where error.kind == .cancelled {
                log.error("interrupted; tearing down")
                return .interrupted
            } catch {
                log.error("test failed: \(error)")
                return .failed("\(error)")
            }
        }
        if junit.all.isEmpty || outcomeNeedsMainCase(outcome) {
            junit.record(spec.name, seconds: (ContinuousClock.now - began).seconds, failure: failureText(outcome))
        }
        if outcome == .timedOut || { if case .failed = outcome { true } else { false } }() {
            let pictures = await failurePictures()
            if !pictures.isEmpty {
                junit.noteOnFailures("screens at the failure: " + pictures.map(\.lastPathComponent).joined(separator: ", "))
            }
        }
        await teardown()
        if let path = options.junitXML {
            do { try junit.write(to: path) } catch { log.error("cannot write JUnit XML to \(path.path): \(error)") }
        }
        try? junit.write(to: options.outputDirectory.appendingPathComponent("junit.xml"))
        switch outcome {
        case .passed: log.log("test passed in \(TestLog.seconds(since: began))")
        default: log.error("test failed (exit status \(outcome.exitStatus))")
        }
        log.close()
        outputLock.release()
        return outcome
    }

    /// A screenshot of every running machine with a display, taken at once
    /// and within 5 s in all, so a frozen VMM cannot hold the teardown up.
    private func failurePictures() async -> [URL] {
        let formatter = DateFormatter()
        formatter.dateFormat = "yyyyMMdd-HHmmss"
        let stamp = formatter.string(from: Date())
        let directory = options.outputDirectory
        let taken: [URL]?? = try? await withDeadline(seconds: 5, grace: 0.5) { () throws(VouchError) in
            await withTaskGroup(of: URL?.self) { group in
                for machine in self.machines {
                    group.addTask { await machine.failurePicture(in: directory, stamp: stamp) }
                }
                var urls: [URL] = []
                for await url in group { if let url { urls.append(url) } }
                return urls
            }
        }
        guard let urls = taken ?? nil else {
            log.warning("the screens at the failure were not all saved within 5 s")
            return []
        }
        return urls.sorted { $0.path < $1.path }
    }

    private func outcomeNeedsMainCase(_ outcome: RunOutcome) -> Bool {
        // A failure outside any subtest still needs a failing test case.
        outcome != .passed && !junit.all.contains { $0.failure != nil }
    }

    private func failureText(_ outcome: RunOutcome) -> String? {
        switch outcome {
        case .passed: nil
        case .failed(let text): text
        case .timedOut: "global timeout of \(formatSeconds(options.globalTimeout ?? spec.globalTimeout)) reached"
        case .interrupted: "interrupted"
        }
    }

    /// Starts one switch per VLAN, concurrently (or, for TAP networks, the
    /// namespace with its bridges and every machine's TAP devices).
    private func startVLANs() async throws(VouchError) {
        let vlans = network.vlans
        guard !vlans.isEmpty else { return }
        if spec.network == .tap {
            try await log.nested("create the TAP network for VLANs \(vlans.map(String.init).joined(separator: ", "))") { () throws(VouchError) in
                let ns = try await NetworkNamespace.create(vlans: vlans, userNamespace: options.userNamespaceNetwork, log: log)
                namespaceBox.value.withLock { $0 = ns }
                for node in network.nodes {
                    for nic in node.nics {
                        try await ns.addTAP(NetworkNamespace.tapName(node: node.number, vlan: nic.vlan), vlan: nic.vlan)
                    }
                }
            }
            return
        }
        try await log.nested("start VLANs \(vlans.map(String.init).joined(separator: ", "))") { () throws(VouchError) in
            let failure = await withTaskGroup(of: Result<VDESwitch, VouchError>.self) { group -> VouchError? in
                for vlan in vlans {
                    group.addTask {
                        do throws(VouchError) {
                            return .success(try await VDESwitch.start(vlan: vlan, runDirectory: self.runDirectory, log: self.log))
                        } catch {
                            return .failure(error)
                        }
                    }
                }
                var first: VouchError?
                for await result in group {
                    switch result {
                    case .success(let started): switches.withLock { $0.append(started) }
                    case .failure(let error): first = first ?? error
                    }
                }
                return first
            }
            if let failure { throw failure }
        }
    }

    /// Stops every machine and removes the run directory (unless `-K`), in
    /// a fresh task so that a cancelled run still tears down fully. Graceful
    /// first; what is still running after `teardownLimit` seconds is killed.
    /// Safe to call twice.
    public func teardown() async {
        guard tornDown.withLock({ done in defer { done = true }; return !done }) else { return }
        let began = ContinuousClock.now
        await Task.detached { [self] in
            await log.nested("tearing down") {
                let graceful: Void?? = try? await withDeadline(seconds: Driver.teardownLimit - 1, grace: 0.5) { () throws(VouchError) in
                    await self.stopEverything()
                }
                if graceful == nil || graceful! == nil {
                    let killed = ChildProcess.killEverything()
                    log.warning("teardown did not finish within \(formatSeconds(Driver.teardownLimit - 1)): killed \(killed) remaining process group(s)")
                    // Give the kernel a moment to reap what was killed before the directory goes.
                    try? await Task.sleep(for: .milliseconds(300))
                }
                if options.keepState {
                    log.log("kept machine state in \(runDirectory)")
                } else {
                    try? FileManager.default.removeItem(atPath: runDirectory)
                }
                log.debug(String(format: "teardown took %.2f s", (ContinuousClock.now - began).seconds))
            }
        }.value
    }

    private func stopEverything() async {
        let keep = options.keepState
        await withTaskGroup(of: Void.self) { group in
            for m in machines { group.addTask { await m.release(keepState: keep) } }
        }
        let switches = switches.withLock { s in defer { s.removeAll() }; return s }
        await withTaskGroup(of: Void.self) { group in
            for s in switches { group.addTask { await s.stop() } }
        }
        if let ns = namespaceBox.value.withLock({ n in defer { n = nil }; return n }) { await ns.destroy() }
    }

    // MARK: - Run directories

    /// Run directories of the drivers alive in this process, for the last
    /// resort of a second Ctrl-C.
    private static let live = Mutex<[ObjectIdentifier: String]>([:])

    /// Kills every child process at once and removes every run directory:
    /// what a second Ctrl-C does. Returns immediately.
    public static func killEverything() {
        ChildProcess.killEverything()
        usleep(200_000)
        for directory in live.withLock({ Array($0.values) }) { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// A private run directory under `$XDG_RUNTIME_DIR` or `$TMPDIR` (or /tmp),
    /// checked to leave room for the machines' socket paths.
    /// - Throws: `.invalidSpec` when the paths would be too long for unix sockets.
    static func makeRunDirectory(in parent: String?, longestName: Int) throws(VouchError) -> String {
        let env = ProcessInfo.processInfo.environment
        let base = parent ?? env["XDG_RUNTIME_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? env["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        removeAbandonedRunDirectories(in: base)
        // vouch-PID-XXXXXX/vm-state-NAME/monitor is the longest socket path a run has.
        let longest = base.utf8.count + "/vouch-\(getpid())-XXXXXX/vm-state-/monitor".utf8.count + longestName
        guard longest <= UnixSocket.maxPathLength else {
            throw VouchError(.invalidSpec, "socket paths under \(base) would have \(longest) bytes, more than unix sockets allow (\(UnixSocket.maxPathLength)): "
                             + "set TMPDIR (or XDG_RUNTIME_DIR) to a shorter directory, or shorten the machine names")
        }
        var template = Array("\(base)/vouch-\(getpid())-XXXXXX".utf8CString)
        guard let dir = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw VouchError(.other, "cannot create a run directory under \(base)", cause: SystemCallError("mkdtemp \(base)/vouch-…"))
        }
        return String(cString: dir)
    }

    /// Removes the run directories of vouch processes that are gone: only a
    /// SIGKILLed run leaves one (its machines died with it, by the
    /// parent-death signal, but nothing could remove the directory).
    static func removeAbandonedRunDirectories(in base: String) {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []
        for name in names where name.hasPrefix("vouch-") {
            let parts = name.split(separator: "-")
            guard parts.count == 3, parts[2].count == 6, let pid = pid_t(parts[1]), pid != getpid() else { continue }
            guard kill(pid, 0) != 0, errno == ESRCH else { continue }
            var info = stat()
            guard lstat(base + "/" + name, &info) == 0, info.st_uid == getuid(), (info.st_mode & S_IFMT) == S_IFDIR else { continue }
            try? FileManager.default.removeItem(atPath: base + "/" + name)
        }
    }
}

/// The live "booting: a (3 s), b ✓" line while machines boot.
final class BootStatus: Sendable {
    private let names: [String]
    private let log: TestLog
    private let state: Mutex<[String: String]>
    private let began = ContinuousClock.now

    init(names: [String], log: TestLog) {
        self.names = names
        self.log = log
        self.state = Mutex(Dictionary(uniqueKeysWithValues: names.map { ($0, "") }))
    }

    func done(_ name: String) { state.withLock { $0[name] = "up" }; render() }
    func failed(_ name: String) { state.withLock { $0[name] = "failed" }; render() }
    func clear() { log.setStatus(nil) }

    func tick() async {
        while !Task.isCancelled {
            render()
            try? await Task.sleep(for: .milliseconds(250))
        }
    }

    private func render() {
        let elapsed = String(format: "%.1f s", (ContinuousClock.now - began).seconds)
        let parts = state.withLock { s in names.map { n in s[n]!.isEmpty ? "\(n) …" : "\(n) \(s[n]!)" } }
        log.setStatus("booting (\(elapsed)): " + parts.joined(separator: ", "))
    }
}

/// The TAP network's namespace, set once the run has started (shared with machine contexts).
final class NamespaceBox: Sendable {
    let value = Mutex<NetworkNamespace?>(nil)
}
