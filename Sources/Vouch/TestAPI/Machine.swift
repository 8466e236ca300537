import Foundation
import VouchBackends
import VouchGuest
import VouchSupport

/// One machine under test, driven through its backdoor root shell.
///
/// Every method is async and throws `VouchError`, naming this machine, the
/// command, its exit status and the tail of its output. A machine boots on
/// its first command if the script never called `start()`.
public actor Machine {
    /// The node name from the spec.
    public nonisolated let name: String
    /// The name as a script variable (`a-b` becomes `a_b`).
    public nonisolated var variableName: String { NodeNames.variableName(for: name) }
    /// The backend's name ("qemu", "nspawn", "ssh").
    public nonisolated let backendName: String

    let context: MachineContext
    let outputDirectory: URL
    let bootTimeout: Double
    /// Unit that means "booted" (for images with systemd), or nil.
    public nonisolated let readyUnit: String?
    let makeBackend: @Sendable (MachineContext) -> any Backend
    let provider: (any BackendProvider)?
    /// Where boot snapshots are reused from (`--snapshot-after-boot`), or nil.
    let snapshotCache: SnapshotCache?
    var backend: (any Backend)?
    var shell: GuestShell?
    private var booting: Task<Void, Never>?
    private var bootResult: Result<Void, VouchError>?
    /// Whether the guest's shell is connected.
    public internal(set) var booted = false
    /// How long the last boot took to the first usable shell, in seconds.
    public internal(set) var lastBootSeconds: Double?
    /// Whether a guest reboot resets the machine instead of ending it (`start(allowReboot:)`).
    private var rebootAllowed = false
    private var warnedPlainFraming = false
    /// The guest resets (`MachineHealth.guestResets`) the shell has come back from.
    var resetsSeen = 0
    /// One OCR round at a time per machine: three tesseracts already fill the cores.
    let ocrLock = AsyncLock()

    var log: TestLog { context.log }
    var console: Console { context.console }

    init(
        context: MachineContext, backendName: String, outputDirectory: URL, bootTimeout: Double, readyUnit: String?,
        provider: (any BackendProvider)? = nil, snapshotCache: SnapshotCache? = nil,
        makeBackend: @escaping @Sendable (MachineContext) -> any Backend
    ) {
        self.name = context.name
        self.backendName = backendName
        self.context = context
        self.outputDirectory = outputDirectory
        self.bootTimeout = bootTimeout
        self.readyUnit = readyUnit
        self.provider = provider
        self.makeBackend = makeBackend
        self.snapshotCache = snapshotCache
    }

    // MARK: - Lifecycle

    /// Boots the machine and waits until its root shell answers.
    /// Returns at once if it is already up; concurrent callers share one boot.
    /// With `allowReboot`, a reboot inside the guest resets the machine
    /// instead of ending it (nixpkgs' `start(allow_reboot=True)`).
    /// - Throws: `.bootFailed` with the console tail if the guest does not
    ///   come up within the boot timeout or its process dies; `.cancelled`.
    public func start(allowReboot: Bool = false) async throws(VouchError) {
        if allowReboot { rebootAllowed = true }
        if booted {
            if allowReboot { try await applyRebootPolicy() }
            return
        }
        let task: Task<Void, Never>
        if let booting {
            task = booting
        } else {
            bootResult = nil
            task = Task { await self.bootOnce() }
            booting = task
        }
        // The boot is shared by concurrent callers; any caller's cancellation
        // (Ctrl-C, a failed sibling in startAll) stops it.
        await withTaskCancellationHandler { await task.value } onCancel: { task.cancel() }
        if booting == task { booting = nil }
        if Task.isCancelled, !booted { throw VouchError.cancelled("cancelled while booting", machine: name) }
        switch bootResult {
        case .failure(let error)?: throw error
        case .success?, nil: return
        }
    }

    private func bootOnce() async {
        do throws(VouchError) {
            try await boot()
            bootResult = .success(())
        } catch {
            bootResult = .failure(error)
        }
    }

    private func boot() async throws(VouchError) {
        log.log("starting \(backendName == "qemu" ? "vm" : backendName + " machine")", machine: name)
        let began = ContinuousClock.now
        let firstBoot = lastBootSeconds == nil
        context.health.reset()
        context.console.markBoot()
        if let old = backend, old.exitStatus != nil {
            await old.stop(keepState: true)
            backend = nil
        }
        if backend == nil { backend = makeBackend(context) }
        if let snapshotCache, firstBoot {
            if try await bootFromSnapshot(snapshotCache, began: began) {
                try await applyRebootPolicy()
                return
            }
        }
        guard let backend else { return }
        let deadline = Deadline(seconds: bootTimeout)
        let channel: GuestChannel
        do throws(VouchError) {
            // A little past the boot deadline: a backend that watches its own start (a start script's
            // contract) reports what went wrong itself, which says more than a plain timeout.
            guard let started = try await withDeadline(seconds: bootTimeout + 3, { () throws(VouchError) in try await backend.start() }) else {
                throw await bootTimedOut(backend, what: "starting \(backend.kind)")
            }
            channel = started
        } catch where error.kind == .cancelled {
            throw error
        } catch {
            throw error.on(name)
        }
        let shell = GuestShell(machine: name, channel: channel)
        log.debug("waiting for the backdoor banner", machine: name)
        try await connect(shell, backend: backend, until: deadline, what: "boot")
        self.shell = shell
        booted = true
        resetsSeen = context.health.guestResets
        let seconds = (ContinuousClock.now - began).seconds
        lastBootSeconds = seconds
        log.log(String(format: "connected to the guest root shell (%.2f s after start)", seconds), machine: name)
        await noteFraming(shell)
        try await applyRebootPolicy()
        if let snapshotCache, firstBoot { await storeBootSnapshot(snapshotCache) }
    }

    private func applyRebootPolicy() async throws(VouchError) {
        guard rebootAllowed, let power = backend as? any PowerControl else { return }
        try await power.allowReboot(true)
    }

    private func noteFraming(_ shell: GuestShell) async {
        guard await !shell.detectsLeftovers, !warnedPlainFraming else { return }
        warnedPlainFraming = true
        log.warning("the guest cannot make a FIFO (no writable /run, /dev/shm or /tmp, or no mkfifo): commands that leave processes writing to their output are not waited for", machine: name)
    }

    /// Waits for the banner and sets up the framing, until `deadline`.
    func connect(_ shell: GuestShell, backend: any Backend, until deadline: Deadline, what: String) async throws(VouchError) {
        do {
            try await shell.connect(until: deadline)
        } catch where error.kind == .timeout {
            throw await bootTimedOut(backend, what: what)
        } catch where error.kind == .machineDown {
            if let fault = context.health.fault { throw fault }
            let status = try? await backend.waitForExit(until: 2)
            let panic = console.panicLine.map { "; the guest kernel panicked: \($0)" } ?? ""
            throw VouchError(.bootFailed, "the guest went away during \(what)" + (status.map { " (\(backend.kind) \($0))" } ?? "") + panic,
                             machine: name, outputTail: console.tail(lines: 30), cause: error)
        }
    }

    private func bootTimedOut(_ backend: any Backend, what: String) async -> VouchError {
        let consoleTail = console.tail(lines: 30)
        var notes: [String] = []
        if consoleTail.isEmpty { notes.append("the serial console printed nothing") }
        if let note = await backend.diagnose() { notes.append(note) }
        return VouchError(.bootFailed, "the backdoor shell did not come up within \(formatSeconds(bootTimeout)) (\(what)"
                          + notes.map { "; " + $0 }.joined() + ")", machine: name, outputTail: consoleTail)
    }

    /// Powers the guest off cleanly and waits for its process to end.
    /// - Throws: `.timeout` if it does not stop within `timeout` (it is then
    ///   killed); `.unsupported` where the backend has no power control.
    public func shutdown(timeout: Double = 120) async throws(VouchError) {
        guard booted, let shell, let backend else { return }
        let power = try capability(PowerControl.self, .power, for: "shutdown")
        try power.permit(.shutdown)
        log.log("shutting down", machine: name)
        await shell.markLost("the machine was shut down")
        try await shell.sendUnframed(power.powerOffCommand, until: Deadline(seconds: 10))
        booted = false
        self.shell = nil
        if let status = try await backend.waitForExit(until: timeout) {
            log.log("powered off (\(backend.kind) \(status))", machine: name)
            return
        }
        let note = await backend.diagnose()
        await backend.stop(keepState: true)
        throw VouchError(.timeout, "did not power off within \(formatSeconds(timeout))" + (note.map { " (\($0))" } ?? "") + "; killed it",
                         machine: name, outputTail: console.tail())
    }

    /// Waits until the machine powers off by itself (it does not ask it to).
    /// Returns at once if it is not running.
    /// - Throws: `.timeout` after `timeout` seconds; `.machineDown` at once
    ///   when its VMM reports a fault (a paused guest never powers off).
    public func waitForShutdown(timeout: Double = 900) async throws(VouchError) {
        guard let backend, backend.exitStatus == nil else { return }
        log.log("waiting for the machine to power off", machine: name)
        let deadline = Deadline(seconds: timeout)
        while true {
            try context.health.check()
            if let status = try await backend.waitForExit(until: min(1, deadline.remaining)) {
                log.log("powered off (\(backend.kind) \(status))", machine: name)
                break
            }
            if deadline.hasPassed {
                throw VouchError(.timeout, "did not power off within \(formatSeconds(timeout))", machine: name, outputTail: console.tail())
            }
        }
        await shell?.markLost("the machine powered off")
        booted = false
        shell = nil
    }

    /// Stops the machine abruptly, like pulling the power cord.
    /// - Throws: `.unsupported` where the backend cannot; `VouchError` from its control channel.
    public func crash() async throws(VouchError) {
        guard backend != nil else { return }
        let crashable = try capability(Crashable.self, .crash, for: "crash")
        log.log("simulating a crash", machine: name)
        await shell?.markLost("the machine crashed")
        booted = false
        shell = nil
        try await crashable.crash()
    }

    /// Reboots the guest and waits until its shell is back.
    /// - Throws: `.bootFailed` if it does not come back within the boot timeout.
    public func reboot() async throws(VouchError) {
        try await start()
        guard backend != nil, let shell else { return }
        let power = try capability(PowerControl.self, .power, for: "reboot")
        try power.permit(.reboot)
        log.log("rebooting", machine: name)
        try await power.allowReboot(true)
        booted = false
        do throws(VouchError) {
            try await shell.sendUnframed("reboot", until: Deadline(seconds: 10))
            context.health.reset()
            do {
                try await shell.reconnect(until: Deadline(seconds: bootTimeout))
            } catch where error.kind == .timeout {
                throw VouchError(.bootFailed, "did not come back from reboot within \(formatSeconds(bootTimeout))",
                                 machine: name, outputTail: console.tail(lines: 30))
            }
        } catch {
            if !rebootAllowed { try? await power.allowReboot(false) }
            throw error
        }
        if !rebootAllowed { try await power.allowReboot(false) }
        booted = true
        resetsSeen = context.health.guestResets
        log.log("back after reboot", machine: name)
    }

    /// Whether the guest's shell is connected and its process running.
    public func isUp() -> Bool {
        booted && backend?.exitStatus == nil && context.health.fault == nil
    }

    /// Gives a user an interactive shell on the guest: `input` is what they
    /// type, `output` gets what the guest prints. Returns when that shell exits.
    /// - Throws: `.machineDown` / `.protocolError` from the guest shell.
    func shellInteract(input: ByteQueue, output: @escaping @Sendable ([UInt8]) async -> Void) async throws(VouchError) {
        try await start()
        guard let shell else { throw VouchError(.machineDown, "the machine is not running", machine: name) }
        try await shell.interact(input: input, output: output)
    }

    /// Releases the backend (teardown). Never throws, and is bounded.
    func release(keepState: Bool) async {
        booting?.cancel()
        await shell?.markLost("the test run ended")
        booted = false
        shell = nil
        if let backend { await backend.stop(keepState: keepState) }
        backend = nil
        console.close()
    }

    /// The backend as `capability`, or the error saying it has none.
    func capability<C>(_ type: C.Type, _ capability: Capability, for operation: String) throws(VouchError) -> C {
        guard let backend else { throw VouchError(.machineDown, "the machine is not running", machine: name) }
        guard let adopted = backend as? C else {
            let why = provider?.whyMissing(capability).map { ": \($0)" } ?? ""
            throw VouchError(.unsupported, "\(operation) is not supported by the \(backend.kind) backend\(why)", machine: name)
        }
        return adopted
    }

    // MARK: - Commands

    /// Runs `command` in the guest's root shell (bash, `set -euo pipefail`,
    /// stdin from /dev/null; stderr goes to the serial console log). As in
    /// nixpkgs, the answer waits until everything the command started has
    /// closed its stdout (a warning is logged when it had to wait).
    /// - Returns: the exit status and stdout.
    /// - Throws: `.timeout` after `timeout` seconds, which include any wait
    ///   for the shell (the command is interrupted), `.machineDown` if the
    ///   guest dies or its VMM pauses it meanwhile, `.cancelled`.
    @discardableResult
    public func execute(
        _ command: String, timeout: Double = 900, file: String = #filePath, line: Int = #line
    ) async throws(VouchError) -> CommandResult {
        let location = SourceLocation(file: file, line: line)
        do {
            try await start()
        } catch {
            throw error.at(location)
        }
        // The boot has its own deadline; the command's starts now and covers any wait for the shell.
        let deadline = Deadline(seconds: timeout)
        guard let shell else {
            throw VouchError(.machineDown, "the machine is not running", machine: name, command: command, location: location)
        }
        do {
            if context.health.guestResets != resetsSeen { try await followGuestReboot(shell) }
            let result = try await shell.run(command, until: deadline)
            if result.waitedForLeftovers { warnLeftovers(command) }
            return result
        } catch where error.kind == .machineDown {
            throw await machineDownError(error, command: command).at(location)
        } catch where error.kind == .timeout {
            var error = error
            if let note = await backend?.diagnose() { error.message += "; \(note)" }
            throw error.at(location)
        } catch {
            throw error.at(location)
        }
    }

    /// The guest rebooted itself (rebooting allowed): its old shell is gone,
    /// so wait for the new one's banner before the next command.
    private func followGuestReboot(_ shell: GuestShell) async throws(VouchError) {
        log.log("the guest rebooted; waiting for its shell", machine: name)
        booted = false
        do {
            try await shell.reconnect(until: Deadline(seconds: bootTimeout))
        } catch where error.kind == .timeout {
            throw VouchError(.bootFailed, "did not come back from the reboot it started within \(formatSeconds(bootTimeout))",
                             machine: name, outputTail: console.tail(lines: 30))
        }
        resetsSeen = context.health.guestResets
        booted = true
        log.log("back after reboot", machine: name)
    }

    private func warnLeftovers(_ command: String) {
        log.warning("`\(command)`: the command exited, but a process it started kept its stdout open, so Vouch waited for it to close "
                    + "(as nixpkgs does). To run something in the background, detach its output (`… >&2 &`, `… >/dev/null &`) "
                    + "or start it with `systemd-run`.", machine: name)
    }

    /// Runs `command` with the Python driver's two-round-trip framing, to
    /// compare against Vouch's own in benchmarks. Not for tests.
    @_spi(Benchmark) @discardableResult
    public func executeTwoStep(_ command: String, timeout: Double = 900) async throws(VouchError) -> CommandResult {
        try await start()
        guard let shell else { throw VouchError(.machineDown, "the machine is not running", machine: name, command: command) }
        return try await shell.runTwoStep(command, until: Deadline(seconds: timeout))
    }

    /// Runs `command` with the plain framing (no wait for leftovers), to
    /// compare costs in benchmarks. Not for tests.
    @_spi(Benchmark) @discardableResult
    public func executePlain(_ command: String, timeout: Double = 900) async throws(VouchError) -> CommandResult {
        try await start()
        guard let shell else { throw VouchError(.machineDown, "the machine is not running", machine: name, command: command) }
        return try await shell.run(command, until: Deadline(seconds: timeout), plain: true)
    }

    /// Runs each command, requiring exit status 0; returns their outputs concatenated.
    /// - Throws: `.commandFailed` with the status and output tail.
    @discardableResult
    public func succeed(
        _ commands: String..., timeout: Double = 900, file: String = #filePath, line: Int = #line
    ) async throws(VouchError) -> String {
        try await run(commands, expectingSuccess: true, timeout: timeout, location: .init(file: file, line: line))
    }

    /// Runs each command, requiring a non-zero exit status; returns their outputs concatenated.
    /// - Throws: `.commandSucceeded` if one exits 0.
    @discardableResult
    public func fail(
        _ commands: String..., timeout: Double = 900, file: String = #filePath, line: Int = #line
    ) async throws(VouchError) -> String {
        try await run(commands, expectingSuccess: false, timeout: timeout, location: .init(file: file, line: line))
    }

    private func run(_ commands: [String], expectingSuccess: Bool, timeout: Double, location: SourceLocation) async throws(VouchError) -> String {
        var output = ""
        for command in commands {
            log.log("must \(expectingSuccess ? "succeed" : "fail"): \(command)", machine: name)
            let result = try await execute(command, timeout: timeout, file: location.file, line: location.line)
            guard (result.status == 0) == expectingSuccess else {
                throw expectingSuccess
                    ? VouchError(.commandFailed, NixpkgsMessage.commandFailed.format(["command": command, "status": "\(result.status)"]), machine: name,
                                 command: command, status: result.status, outputTail: tail(result.text), location: location)
                    : VouchError(.commandSucceeded, NixpkgsMessage.commandSucceeded.format(["command": command]), machine: name,
                                 command: command, status: 0, outputTail: tail(result.text), location: location)
            }
            output += result.text
        }
        return output
    }

    /// Turns a "connection closed" into what really happened to the guest.
    private func machineDownError(_ error: VouchError, command: String) async -> VouchError {
        booted = false
        shell = nil
        if let fault = context.health.fault {
            var fault = fault
            fault.command = command
            return fault
        }
        var error = error
        if let backend {
            let status = try? await backend.waitForExit(until: 2)
            error.message = "the machine went away while running a command"
                + (status.map { " (\(backend.kind) \($0))" } ?? "")
            if let panic = console.panicLine { error.message += "; the guest kernel panicked: \(panic)" }
        }
        error.command = command
        error.outputTail = console.tail(lines: 25)
        return error
    }
}

extension Backend {
    /// The exit status if the process ends within `seconds`, else nil.
    func waitForExit(until seconds: Double) async throws(VouchError) -> ExitStatus? {
        try await withDeadline(seconds: seconds, grace: 0.2) { () throws(VouchError) in try await self.waitForExit() }
    }
}
