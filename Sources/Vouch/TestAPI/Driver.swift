import Foundation
import Glibc
import Synchronization

/// Options for one run, as the CLI passes them.
public struct RunOptions: Sendable {
    /// Where the log, JUnit file, screenshots and copied files go.
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
/// every machine process ends and the run directory is removed.
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
    /// The machines, in name order.
    public let machines: [Machine]
    /// This run's private directory (0700): machine state, sockets, shared dir.
    public let runDirectory: String
    /// Node numbers, MACs and addresses of every machine.
    public let network: NetworkPlan
    private let switches = Mutex<[VDESwitch]>([])
    /// The namespace holder's pid, for machines to enter (TAP networks).
    private let namespaceBox: NamespaceBox

    /// Validates `spec` and prepares the run; boots nothing.
    /// - Throws: `VouchError.invalidSpec` / `.missingImage` before anything is started.
    public init(spec: TestSpec, options: RunOptions) throws {
        let plans = try spec.machines.map { try BackendFactory.plan(for: $0, accelerator: options.accelerator) }
        let network = try NetworkPlan(machines: spec.machines.map { ($0.name, $0.vlans) })
        let fm = FileManager.default
        try fm.createDirectory(at: options.outputDirectory, withIntermediateDirectories: true)
        self.spec = spec
        self.options = options
        self.log = TestLog(file: options.outputDirectory.appendingPathComponent("vouch.log"), quiet: options.quiet)
        self.junit = JUnitReport(suiteName: spec.name)
        self.network = network
        let namespaceBox = NamespaceBox()
        self.namespaceBox = namespaceBox
        let runDirectory = try Driver.makeRunDirectory()
        self.runDirectory = runDirectory
        let shared = runDirectory + "/shared-xchg"
        try fm.createDirectory(atPath: shared, withIntermediateDirectories: true)
        var machines: [Machine] = []
        let cache = options.snapshotAfterBoot || spec.snapshotAfterBoot ? SnapshotCache(root: options.snapshotCacheDirectory) : nil
        for (m, plan) in zip(spec.machines, plans) {
            var context = MachineContext(
                name: m.name, stateDirectory: runDirectory + "/vm-state-\(m.name)", sharedDirectory: shared,
                log: log, console: Console(machine: m.name, log: log))
            if let node = network.node(m.name) {
                let tap = spec.network == .tap
                let attachments = node.nics.map {
                    MachineNetwork.Attachment(
                        nic: $0, switchDirectory: VDESwitch.socketDirectory(vlan: $0.vlan, runDirectory: runDirectory),
                        tap: tap ? NetworkNamespace.tapName(node: node.number, vlan: $0.vlan) : nil)
                }
                context.network = MachineNetwork(
                    attachments: attachments, kernelParameters: network.kernelParameters(for: m.name, forwarding: true),
                    forwardingMAC: NetworkPlan.forwardingMAC(node: node.number))
                if tap {
                    context.network?.enterNamespace = { namespaceBox.value.withLock { $0?.enterArguments } }
                }
            }
            machines.append(Machine(context: context, outputDirectory: options.outputDirectory,
                                    bootTimeout: m.bootTimeout, readyUnit: plan.readyUnit, snapshotCache: cache,
                                    makeBackend: plan.make))
        }
        self.machines = machines
    }

    /// The pid holding the test's network namespace (TAP networks, once running).
    var namespaceHolderPID: pid_t? { namespaceBox.value.withLock { $0?.pid } }

    /// The machine called `name`.
    /// - Throws: `VouchError.invalidSpec` listing the machines that exist.
    public func machine(_ name: String) throws -> Machine {
        guard let m = machines.first(where: { $0.name == name || $0.variableName == name }) else {
            throw VouchError(.invalidSpec, "no machine named '\(name)' (machines: \(machines.map(\.name).joined(separator: ", ")))")
        }
        return m
    }

    /// Boots every machine concurrently and waits until all shells answer.
    /// - Throws: the first machine's boot error (the others keep booting and
    ///   are torn down with the run).
    public func startAll() async throws {
        try await log.nested("start all VMs") {
            let status = BootStatus(names: machines.map(\.name), log: log)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for machine in machines {
                    group.addTask {
                        do {
                            try await machine.start()
                            status.done(machine.name)
                        } catch {
                            status.failed(machine.name)
                            throw error
                        }
                    }
                }
                let ticker = Task { await status.tick() }
                defer { ticker.cancel(); status.clear() }
                do {
                    while try await group.next() != nil {}
                } catch {
                    // One machine cannot boot: stop the others now rather
                    // than after their own boot deadlines.
                    group.cancelAll()
                    throw error
                }
            }
        }
    }

    /// Runs `script` under the global timeout, then tears down.
    /// Never throws: the outcome says how it ended, and is logged.
    public func run(_ script: @escaping @Sendable (Driver) async throws -> Void) async -> RunOutcome {
        // A reader of our output going away (`vouch run | head`) must not kill
        // the driver before teardown: writes then fail and are dropped instead.
        signal(SIGPIPE, SIG_IGN)
        let timeout = options.globalTimeout ?? spec.globalTimeout
        let began = ContinuousClock.now
        let outcome: RunOutcome = await Driver.$current.withValue(self) {
            do {
                try await withDeadline(seconds: timeout) {
                    try await self.startVLANs()
                    try await Driver.$current.withValue(self) { try await script(self) }
                }
                return .passed
            } catch is DeadlineExceeded {
                log.error("timeout reached; test terminating...")
                return .timedOut
            } catch is CancellationError {
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
        return outcome
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
    private func startVLANs() async throws {
        let vlans = network.vlans
        guard !vlans.isEmpty else { return }
        if spec.network == .tap {
            try await log.nested("create the TAP network for VLANs \(vlans.map(String.init).joined(separator: ", "))") {
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
        try await log.nested("start VLANs \(vlans.map(String.init).joined(separator: ", "))") {
            try await withThrowingTaskGroup(of: VDESwitch.self) { group in
                for vlan in vlans {
                    group.addTask { try await VDESwitch.start(vlan: vlan, runDirectory: self.runDirectory, log: self.log) }
                }
                for try await started in group { switches.withLock { $0.append(started) } }
            }
        }
    }

    /// Stops every machine and removes the run directory (unless `-K`).
    /// Runs in a fresh task so that a cancelled run still tears down fully.
    public func teardown() async {
        await Task.detached { [self] in
            await log.nested("tearing down") {
                let keep = options.keepState
                await withTaskGroup(of: Void.self) { group in
                    for m in machines { group.addTask { await m.release(keepState: keep) } }
                }
                let switches = switches.withLock { s in defer { s.removeAll() }; return s }
                await withTaskGroup(of: Void.self) { group in
                    for s in switches { group.addTask { await s.stop() } }
                }
                if let ns = namespaceBox.value.withLock({ n in defer { n = nil }; return n }) { await ns.destroy() }
                if keep {
                    log.log("kept machine state in \(runDirectory)")
                } else {
                    try? FileManager.default.removeItem(atPath: runDirectory)
                }
            }
        }.value
    }

    static func makeRunDirectory() throws -> String {
        let env = ProcessInfo.processInfo.environment
        let base = env["XDG_RUNTIME_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? env["TMPDIR"] ?? "/tmp"
        var template = Array("\(base)/vouch-\(getpid())-XXXXXX".utf8CString)
        guard let dir = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw VouchError(.other, "cannot create a run directory under \(base): \(SystemError("mkdtemp"))")
        }
        return String(cString: dir)
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
