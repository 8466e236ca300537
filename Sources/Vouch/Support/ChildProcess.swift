internal import CVouch
import Foundation
import Glibc
import Synchronization

/// How a child process ended.
public enum ExitStatus: Sendable, Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    /// "exit status N" or "killed by signal N".
    public var description: String {
        switch self {
        case .exited(let code): "exit status \(code)"
        case .signaled(let sig): "killed by signal \(sig)"
        }
    }
}

/// A child process in its own session, with its output read by threads.
///
/// The child dies with SIGKILL if Vouch dies (parent-death signal), so even a
/// SIGKILLed driver leaves no orphan. `terminate(grace:)` ends the whole
/// process group: TERM, then KILL after the grace period.
final class ChildProcess: Sendable {
    let pid: pid_t
    let executable: String
    /// Standard output, if it was captured.
    let stdout: FDReader?
    /// Standard error, if it was captured.
    let stderr: FDReader?
    /// The write end of the child's stdin, if it was requested.
    let stdinFD: Int32?

    private let exit = ExitLatch()

    /// Which streams to connect to pipes.
    struct Pipes: OptionSet, Sendable {
        let rawValue: Int
        static let stdin = Pipes(rawValue: 1)
        static let stdout = Pipes(rawValue: 2)
        static let stderr = Pipes(rawValue: 4)
    }

    /// Starts `executable` (looked up in PATH when it has no slash).
    ///
    /// With `controllingTerminal`, the first of the child's stdin, stdout and
    /// stderr that is a terminal (e.g. `stdoutFD` = a pty slave) becomes its
    /// controlling terminal, so `/dev/tty` and the terminal's signal keys work.
    /// `inheritedFD` is handed to the child as its fd 3. `standardStreams`
    /// gives the child these descriptors as stdin, stdout and stderr (for
    /// streams not piped). With `foreground`, the child stays in this session
    /// as the foreground process group of the terminal on its stdin.
    /// - Throws: `VouchError.spawnFailed` naming the program when it cannot be found or executed.
    init(
        _ executable: String,
        _ arguments: [String],
        environment: [String: String]? = nil,
        workingDirectory: String? = nil,
        pipes: Pipes = [.stdout, .stderr],
        stdoutFD: Int32? = nil,
        controllingTerminal: Bool = false,
        inheritedFD: Int32? = nil,
        standardStreams: (Int32, Int32, Int32)? = nil,
        foreground: Bool = false
    ) throws {
        guard let path = ChildProcess.resolve(executable) else {
            throw VouchError.spawnFailed(program: executable, reason: "not found in PATH")
        }
        self.executable = executable
        var toClose: [Int32] = []
        defer { toClose.forEach { close($0) } }
        func makePipe() throws -> (read: Int32, write: Int32) {
            var fds: [Int32] = [0, 0]
            // Children get only fds 0-2 (the spawner closes the rest), so CLOEXEC here is belt and braces.
            guard pipe(&fds) == 0 else { throw SystemError("pipe") }
            _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
            _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
            return (fds[0], fds[1])
        }
        var stdinRead: Int32 = standardStreams?.0 ?? -1, stdoutWrite: Int32 = stdoutFD ?? standardStreams?.1 ?? -1
        var stderrWrite: Int32 = standardStreams?.2 ?? -1
        var stdinWrite: Int32?, stdoutRead: Int32?, stderrRead: Int32?
        if pipes.contains(.stdin) {
            let p = try makePipe(); stdinRead = p.read; stdinWrite = p.write; toClose.append(p.read)
        }
        if pipes.contains(.stdout) {
            let p = try makePipe(); stdoutRead = p.read; stdoutWrite = p.write; toClose.append(p.write)
        }
        if pipes.contains(.stderr) {
            let p = try makePipe(); stderrRead = p.read; stderrWrite = p.write; toClose.append(p.write)
        }

        let env = environment ?? ProcessInfo.processInfo.environment
        let argv = [path] + arguments
        let envp = env.map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        let result = withCStrings(argv) { cArgv in
            withCStrings(envp) { cEnvp in
                path.withCString { cPath in
                    withOptionalCString(workingDirectory) { cCwd in
                        var request = vouch_spawn_request(
                            path: cPath, argv: cArgv, envp: cEnvp, cwd: cCwd,
                            stdin_fd: stdinRead, stdout_fd: stdoutWrite, stderr_fd: stderrWrite,
                            set_ctty: controllingTerminal ? 1 : 0, inherit_fd: inheritedFD ?? -1,
                            foreground: foreground ? 1 : 0)
                        return vouch_spawn(&request, &pid)
                    }
                }
            }
        }
        guard result == 0 else {
            [stdinWrite, stdoutRead, stderrRead].compactMap { $0 }.forEach { close($0) }
            throw VouchError.spawnFailed(program: executable, reason: String(cString: strerror(result)))
        }
        self.pid = pid
        self.stdinFD = stdinWrite
        let name = (executable as NSString).lastPathComponent
        self.stdout = stdoutRead.map { FDReader(fd: $0, name: "\(name)-\(pid)-out") }
        self.stderr = stderrRead.map { FDReader(fd: $0, name: "\(name)-\(pid)-err") }
        let latch = exit
        let childPID = pid
        let waiter = Thread {
            let raw = vouch_wait(childPID)
            let status: ExitStatus =
                raw < 0 ? .exited(-1)
                : vouch_signaled(raw) != 0 ? .signaled(vouch_term_signal(raw))
                : .exited(vouch_exit_status(raw))
            latch.set(status)
        }
        waiter.name = "vouch-wait-\(pid)"
        waiter.start()
    }

    deinit {
        if exit.value == nil { kill(-pid, SIGKILL) }
        if let fd = stdinFD { close(fd) }
    }

    /// The exit status, or nil while the process runs.
    var exitStatus: ExitStatus? { exit.value }

    /// Waits until the process has exited.
    /// - Throws: `CancellationError` if the waiting task is cancelled.
    func waitForExit() async throws -> ExitStatus {
        try await exit.wait()
    }

    /// Sends `signal` to the child's whole process group.
    func signal(_ signal: Int32) {
        guard exit.value == nil else { return }
        kill(-pid, signal)
    }

    /// Ends the process group: SIGTERM, then SIGKILL after `grace` seconds.
    /// Returns once the process has been reaped. Never throws; safe to call twice.
    @discardableResult
    func terminate(grace: Double = 2) async -> ExitStatus {
        if let done = exit.value { return done }
        signal(SIGTERM)
        if let status = try? await withDeadline(seconds: grace, { try await self.exit.wait() }) {
            kill(-pid, SIGKILL)  // stragglers in the group
            return status
        }
        signal(SIGKILL)
        return await exit.waitUncancellable()
    }

    /// Runs a program to completion and returns its status and its stdout and
    /// stderr interleaved as they arrived.
    /// - Throws: `VouchError.spawnFailed`; `CancellationError`.
    static func run(
        _ executable: String, _ arguments: [String], environment: [String: String]? = nil,
        workingDirectory: String? = nil
    ) async throws -> (status: ExitStatus, output: String) {
        let process = try ChildProcess(executable, arguments, environment: environment, workingDirectory: workingDirectory)
        let output = OutputCollector()
        async let out: Void = output.drain(process.stdout!.queue)
        async let err: Void = output.drain(process.stderr!.queue)
        let status = try await process.waitForExit()
        _ = await (out, err)
        return (status, output.text)
    }

    /// Resolves a program name against PATH.
    static func resolve(_ executable: String) -> String? {
        if executable.contains("/") {
            return access(executable, X_OK) == 0 ? executable : nil
        }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        for dir in path.split(separator: ":") {
            let candidate = "\(dir)/\(executable)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }
}

/// A value set once, which tasks can wait for.
final class ExitLatch: Sendable {
    private struct State {
        var value: ExitStatus?
        var waiters: [UInt64: CheckedContinuation<ExitStatus?, Never>] = [:]
        var nextID: UInt64 = 0
    }
    private let state = Mutex(State())

    var value: ExitStatus? { state.withLock { $0.value } }

    func set(_ value: ExitStatus) {
        let waiters = state.withLock { s -> [CheckedContinuation<ExitStatus?, Never>] in
            s.value = value
            defer { s.waiters.removeAll() }
            return Array(s.waiters.values)
        }
        waiters.forEach { $0.resume(returning: value) }
    }

    func wait() async throws -> ExitStatus {
        let id = state.withLock { s -> UInt64 in s.nextID += 1; return s.nextID }
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<ExitStatus?, Never>) in
                let now = state.withLock { s -> ExitStatus?? in
                    if let v = s.value { return .some(v) }
                    if Task.isCancelled { return .some(nil) }
                    s.waiters[id] = c
                    return .none
                }
                if let now { c.resume(returning: now) }
            }
        } onCancel: {
            let c = state.withLock { $0.waiters.removeValue(forKey: id) }
            c?.resume(returning: nil)
        }
        guard let result else { throw CancellationError() }
        return result
    }

    /// Waits even if the task is cancelled; used by teardown.
    func waitUncancellable() async -> ExitStatus {
        await Task.detached { [self] in try! await self.wait() }.value
    }
}

func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { pointers.forEach { free($0) } }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}

func withOptionalCString<R>(_ string: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    guard let string else { return body(nil) }
    return string.withCString { body($0) }
}
