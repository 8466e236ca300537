import Foundation

/// One machine under test, driven through its backdoor root shell.
///
/// Every method is async and throws `VouchError`, naming this machine, the
/// command, its exit status and the tail of its output. A machine boots on
/// its first command if the script never called `start()`.
public actor Machine {
    /// The node name from the spec.
    public nonisolated let name: String
    /// The name as a script variable (`a-b` becomes `a_b`).
    public nonisolated var variableName: String { Machine.variableName(for: name) }

    let context: MachineContext
    let outputDirectory: URL
    let bootTimeout: Double
    /// Unit that means "booted" (for images with systemd), or nil.
    public nonisolated let readyUnit: String?
    let makeBackend: @Sendable (MachineContext) throws -> any Backend
    /// Where boot snapshots are reused from (`--snapshot-after-boot`), or nil.
    let snapshotCache: SnapshotCache?
    var backend: (any Backend)?
    var shell: GuestShell?
    private var booting: Task<Void, any Error>?
    private var bootStarted: ContinuousClock.Instant?
    /// Whether the guest's shell is connected.
    public internal(set) var booted = false
    /// How long the last boot took to the first usable shell, in seconds.
    public internal(set) var lastBootSeconds: Double?

    var log: TestLog { context.log }
    var console: Console { context.console }

    init(
        context: MachineContext, outputDirectory: URL, bootTimeout: Double, readyUnit: String?,
        snapshotCache: SnapshotCache? = nil,
        makeBackend: @escaping @Sendable (MachineContext) throws -> any Backend
    ) {
        self.name = context.name
        self.context = context
        self.outputDirectory = outputDirectory
        self.bootTimeout = bootTimeout
        self.readyUnit = readyUnit
        self.makeBackend = makeBackend
        self.snapshotCache = snapshotCache
    }

    /// Replaces characters that cannot appear in an identifier with `_`, and
    /// a leading digit too, as nixpkgs does (`a-b` is `a_b`, `1a` is `_a`).
    public static func variableName(for node: String) -> String {
        var name = node.map { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") ? $0 : "_" }
        if let first = name.first, first.isNumber { name[0] = "_" }
        return String(name)
    }

    // MARK: - Lifecycle

    /// Boots the machine and waits until its root shell answers.
    /// Returns at once if it is already up; concurrent callers share one boot.
    /// - Throws: `VouchError.bootFailed` with the console tail if the guest
    ///   does not come up within the boot timeout or its process dies.
    public func start() async throws {
        if booted { return }
        let task: Task<Void, any Error>
        if let booting {
            task = booting
        } else {
            task = Task { try await self.boot() }
            booting = task
        }
        defer { if booting == task { booting = nil } }
        // The boot is shared by concurrent callers; any caller's cancellation
        // (Ctrl-C, a failed sibling in startAll) stops it.
        try await withTaskCancellationHandler { try await task.value } onCancel: { task.cancel() }
    }

    private func boot() async throws {
        log.log("starting vm", machine: name)
        let began = ContinuousClock.now
        bootStarted = began
        let firstBoot = lastBootSeconds == nil
        var backend: any Backend
        if let existing = self.backend, existing.exitStatus == nil {
            backend = existing
        } else {
            if let old = self.backend { await old.stop(keepState: true) }
            backend = try makeBackend(context)
            self.backend = backend
        }
        if let snapshotCache, firstBoot {
            if try await bootFromSnapshot(snapshotCache, began: began) { return }
            backend = self.backend ?? backend
        }
        let channel = try await backend.start()
        let shell = GuestShell(machine: name, channel: channel)
        log.debug("waiting for the backdoor banner", machine: name)
        try await connect(shell, backend: backend, what: "boot")
        self.shell = shell
        booted = true
        let seconds = (ContinuousClock.now - began).seconds
        lastBootSeconds = seconds
        log.log(String(format: "connected to the guest root shell (%.2f s after start)", seconds), machine: name)
        if let snapshotCache, firstBoot { await storeBootSnapshot(snapshotCache) }
    }

    /// Waits for the banner and sets up the framing, within the boot timeout.
    private func connect(_ shell: GuestShell, backend: any Backend, what: String) async throws {
        do {
            try await withDeadline(seconds: bootTimeout) { try await shell.connect() }
        } catch is DeadlineExceeded {
            let consoleTail = console.tail(lines: 30)
            let silent = consoleTail.isEmpty ? "; the serial console printed nothing" : ""
            throw VouchError(.bootFailed, "the backdoor shell did not come up within \(formatSeconds(bootTimeout)) (\(what)\(silent))",
                             machine: name, outputTail: consoleTail)
        } catch let error as VouchError where error.kind == .machineDown {
            let status = try? await withDeadline(seconds: 2) { try await backend.waitForExit() }
            let panic = console.panicLine.map { "; the guest kernel panicked: \($0)" } ?? ""
            throw VouchError(.bootFailed, "the guest went away during \(what)" + (status.map { " (\(backend.kind) \($0))" } ?? "") + panic,
                             machine: name, outputTail: console.tail(lines: 30))
        }
    }

    /// Powers the guest off cleanly and waits for its process to end.
    /// - Throws: `VouchError.timeout` if it does not stop within `timeout`
    ///   (it is then killed).
    public func shutdown(timeout: Double = 120) async throws {
        guard booted, let shell, let backend else { return }
        try backend.check(.shutdown)
        log.log("shutting down", machine: name)
        await shell.markLost("the machine was shut down")
        try await shell.sendUnframed("poweroff")
        booted = false
        self.shell = nil
        do {
            let status = try await withDeadline(seconds: timeout) { try await backend.waitForExit() }
            log.log("powered off (\(backend.kind) \(status))", machine: name)
        } catch is DeadlineExceeded {
            await backend.stop(keepState: true)
            throw VouchError(.timeout, "did not power off within \(formatSeconds(timeout)); killed it", machine: name,
                             outputTail: console.tail())
        }
    }

    /// Waits until the machine powers off by itself (it does not ask it to).
    /// Returns at once if it is not running.
    /// - Throws: `VouchError.timeout` after `timeout` seconds.
    public func waitForShutdown(timeout: Double = 900) async throws {
        guard let backend, backend.exitStatus == nil else { return }
        log.log("waiting for the machine to power off", machine: name)
        do {
            let status = try await withDeadline(seconds: timeout) { try await backend.waitForExit() }
            log.log("powered off (\(backend.kind) \(status))", machine: name)
        } catch is DeadlineExceeded {
            throw VouchError(.timeout, "did not power off within \(formatSeconds(timeout))", machine: name,
                             outputTail: console.tail())
        }
        await shell?.markLost("the machine powered off")
        booted = false
        shell = nil
    }

    /// Stops the machine abruptly, like pulling the power cord.
    /// - Throws: `VouchError` from the backend's control channel.
    public func crash() async throws {
        guard let backend else { return }
        try backend.check(.crash)
        log.log("simulating a crash", machine: name)
        await shell?.markLost("the machine crashed")
        booted = false
        shell = nil
        try await backend.crash()
    }

    /// Reboots the guest and waits until its shell is back.
    /// - Throws: `VouchError.bootFailed` if it does not come back within the boot timeout.
    public func reboot() async throws {
        try await start()
        guard let backend, let shell else { return }
        try backend.check(.reboot)
        log.log("rebooting", machine: name)
        try await backend.allowReboot(true)
        booted = false
        try await shell.sendUnframed("reboot")
        do {
            try await connectAgain(shell, backend: backend)
        } catch {
            try? await backend.allowReboot(false)
            throw error
        }
        try await backend.allowReboot(false)
        booted = true
        log.log("back after reboot", machine: name)
    }

    private func connectAgain(_ shell: GuestShell, backend: any Backend) async throws {
        do {
            try await withDeadline(seconds: bootTimeout) { try await shell.reconnect() }
        } catch is DeadlineExceeded {
            throw VouchError(.bootFailed, "did not come back from reboot within \(formatSeconds(bootTimeout))",
                             machine: name, outputTail: console.tail(lines: 30))
        }
    }

    /// The running backend, for extensions in other files (file copies).
    var currentBackend: (any Backend)? { backend }

    /// Whether the guest's shell is connected and its process running.
    public func isUp() -> Bool {
        booted && backend?.exitStatus == nil
    }

    /// Cuts every network link of the machine: other machines see it vanish.
    /// - Throws: `VouchError.unsupported` where the backend cannot.
    public func block() async throws {
        try await start()
        guard let backend else { return }
        log.log("blocking the network links", machine: name)
        try await backend.setLinks(up: false)
    }

    /// Restores the links `block()` cut.
    /// - Throws: `VouchError.unsupported` where the backend cannot.
    public func unblock() async throws {
        try await start()
        guard let backend else { return }
        log.log("unblocking the network links", machine: name)
        try await backend.setLinks(up: true)
    }

    /// Makes a TCP port of the guest reachable from the host, on 127.0.0.1
    /// only. With `host` nil a free host port is chosen. Returns the host port.
    /// - Throws: `VouchError.unsupported` for machines Vouch did not boot
    ///   itself, `.other` if QEMU refuses (e.g. the port is taken).
    @discardableResult
    public func forwardPort(host: Int? = nil, guest: Int) async throws -> Int {
        try await start()
        guard let backend else { throw VouchError(.machineDown, "not started", machine: name) }
        let hostPort = try host ?? LoopbackTCP.freePort()
        log.log("forwarding 127.0.0.1:\(hostPort) to port \(guest)", machine: name)
        try await backend.forwardPort(hostPort: hostPort, guestPort: guest)
        return hostPort
    }

    /// Runs a QEMU monitor (HMP) command, e.g. `info status` or `device_add …`,
    /// and returns its output (nixpkgs' `send_monitor_command`).
    /// - Throws: `VouchError.unsupported` for backends other than QEMU,
    ///   `.qmpError` if QEMU rejects it.
    @discardableResult
    public func sendMonitorCommand(_ command: String) async throws -> String {
        try await start()
        guard let backend else { throw VouchError(.machineDown, "not started", machine: name) }
        log.log("monitor: \(command)", machine: name)
        do {
            return try await backend.monitorCommand(command)
        } catch var error as VouchError {
            error.machine = name
            throw error
        }
    }

    /// Sends a key combination to the guest, e.g. `sendKey("ctrl-alt-delete")`.
    /// - Throws: `VouchError.unsupported` where the backend has no keyboard.
    public func sendKey(_ combination: String) async throws {
        guard let backend else { throw VouchError(.machineDown, "not started", machine: name) }
        try await backend.sendKeys(combination.split(separator: "-").map(String.init))
    }

    /// Gives a user an interactive shell on the guest: `input` is what they
    /// type, `output` gets what the guest prints. Returns when that shell exits.
    /// - Throws: `VouchError.machineDown` / `.protocolError` from the guest shell.
    func shellInteract(input: ByteQueue, output: @escaping @Sendable ([UInt8]) -> Void) async throws {
        try await start()
        guard let shell else { throw VouchError(.machineDown, "the machine is not running", machine: name) }
        try await shell.interact(input: input, output: output)
    }

    /// Releases the backend (teardown). Never throws.
    func release(keepState: Bool) async {
        booting?.cancel()
        await shell?.markLost("the test run ended")
        booted = false
        shell = nil
        if let backend { await backend.stop(keepState: keepState) }
        backend = nil
    }

    // MARK: - Commands

    /// Runs `command` in the guest's root shell (bash, `set -euo pipefail`,
    /// stdin from /dev/null; stderr goes to the serial console log).
    /// - Returns: the exit status and stdout.
    /// - Throws: `VouchError.timeout` after `timeout` seconds (the command is
    ///   interrupted), `.machineDown` if the guest dies meanwhile.
    @discardableResult
    public func execute(
        _ command: String, timeout: Double = 900, file: String = #filePath, line: Int = #line
    ) async throws -> CommandResult {
        try await start()
        guard let shell else { throw VouchError(.machineDown, "the machine is not running", machine: name, command: command) }
        do {
            return try await shell.run(command, timeout: timeout)
        } catch var error as VouchError {
            if error.kind == .machineDown { error = await machineDownError(error, command: command) }
            throw error.at(SourceLocation(file: file, line: line))
        }
    }

    /// Runs `command` with the Python driver's two-round-trip framing, to
    /// compare against Vouch's own in benchmarks. Not for tests.
    @_spi(Benchmark)
    public func executeTwoStep(_ command: String, timeout: Double = 900) async throws -> CommandResult {
        try await start()
        guard let shell else { throw VouchError(.machineDown, "the machine is not running", machine: name, command: command) }
        return try await shell.runTwoStep(command, timeout: timeout)
    }

    /// Runs each command, requiring exit status 0; returns their outputs concatenated.
    /// - Throws: `VouchError.commandFailed` with the status and output tail.
    @discardableResult
    public func succeed(
        _ commands: String..., timeout: Double = 900, file: String = #filePath, line: Int = #line
    ) async throws -> String {
        try await run(commands, expectingSuccess: true, timeout: timeout, location: .init(file: file, line: line))
    }

    /// Runs each command, requiring a non-zero exit status; returns their outputs concatenated.
    /// - Throws: `VouchError.commandSucceeded` if one exits 0.
    @discardableResult
    public func fail(
        _ commands: String..., timeout: Double = 900, file: String = #filePath, line: Int = #line
    ) async throws -> String {
        try await run(commands, expectingSuccess: false, timeout: timeout, location: .init(file: file, line: line))
    }

    private func run(_ commands: [String], expectingSuccess: Bool, timeout: Double, location: SourceLocation) async throws -> String {
        var output = ""
        for command in commands {
            log.log("must \(expectingSuccess ? "succeed" : "fail"): \(command)", machine: name)
            let result = try await execute(command, timeout: timeout, file: location.file, line: location.line)
            guard (result.status == 0) == expectingSuccess else {
                throw expectingSuccess
                    ? VouchError(.commandFailed, "command failed with exit status \(result.status)", machine: name,
                                 command: command, status: result.status, outputTail: tail(result.text), location: location)
                    : VouchError(.commandSucceeded, "command succeeded but was expected to fail", machine: name,
                                 command: command, status: 0, outputTail: tail(result.text), location: location)
            }
            output += result.text
        }
        return output
    }

    /// Turns a "connection closed" into what really happened to the guest.
    private func machineDownError(_ error: VouchError, command: String) async -> VouchError {
        var error = error
        booted = false
        shell = nil
        if let backend {
            let status = try? await withDeadline(seconds: 2) { try await backend.waitForExit() }
            error.message = "the machine went away while running a command"
                + (status.map { " (\(backend.kind) \($0))" } ?? "")
            if let panic = console.panicLine { error.message += "; the guest kernel panicked: \(panic)" }
        }
        error.command = command
        error.outputTail = console.tail(lines: 25)
        return error
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
