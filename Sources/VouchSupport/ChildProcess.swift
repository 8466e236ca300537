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

/// A child process in its own session (its own process group), with its
/// output read by threads.
///
/// The child dies with SIGKILL if Vouch dies (parent-death signal), so even
/// a SIGKILLed driver leaves no orphan. Every live child is listed in
/// `ChildProcess.killEverything()`'s registry, the last resort of a second
/// Ctrl-C or a teardown past its deadline. `terminate(grace:)` ends the whole
/// process group: TERM, then KILL after the grace period, and is bounded.
package final class ChildProcess: Sendable {
    package let pid: Glibc.pid_t
    package let executable: String
    /// Standard output, if it was captured.
    package let stdout: FDReader?
    /// Standard error, if it was captured.
    package let stderr: FDReader?
    /// The write end of the child's stdin, if it was requested.
    package let stdinFD: Int32?

    private let exit = OneShot<ExitStatus>()

    /// Which streams to connect to pipes.
    package struct Pipes: OptionSet, Sendable {
        package let rawValue: Int
        package init(rawValue: Int) { self.rawValue = rawValue }
        package static let stdin = Pipes(rawValue: 1)
        package static let stdout = Pipes(rawValue: 2)
        package static let stderr = Pipes(rawValue: 4)
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
    /// `gathering` is passed to the readers of piped stdout and stderr (see
    /// `FDReader`).
    /// - Throws: `.spawnFailed` naming the program when it cannot be found or executed.
    package init(
        _ executable: String,
        _ arguments: [String],
        environment: [String: String]? = nil,
        workingDirectory: String? = nil,
        pipes: Pipes = [.stdout, .stderr],
        stdoutFD: Int32? = nil,
        controllingTerminal: Bool = false,
        inheritedFD: Int32? = nil,
        standardStreams: (Int32, Int32, Int32)? = nil,
        foreground: Bool = false,
        gathering: Double = 0
    ) throws(VouchError) {
        guard let path = ChildProcess.resolve(executable) else {
            throw VouchError.spawnFailed(program: executable, reason: "not found in PATH")
        }
        self.executable = executable
        var toClose: [Int32] = []
        defer { toClose.forEach { close($0) } }
        var opened: [Int32] = []
        func makePipe() throws(VouchError) -> (read: Int32, write: Int32) {
            var fds: [Int32] = [0, 0]
            guard pipe(&fds) == 0 else {
                let error = SystemCallError("pipe")
                opened.forEach { close($0) }
                throw VouchError.spawnFailed(program: executable, reason: "\(error)", cause: error)
            }
            // Children get only fds 0-3 (the spawner closes the rest), so CLOEXEC here is belt and braces.
            _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
            _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
            opened += fds
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
        // Registered before the fork so that a concurrent killEverything() cannot miss it.
        let result = Self.registry.withLock { live -> Int32 in
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
            if result == 0 { live[pid] = executable }
            return result
        }
        guard result == 0 else {
            [stdinWrite, stdoutRead, stderrRead].compactMap { $0 }.forEach { close($0) }
            throw VouchError.spawnFailed(program: executable, reason: String(cString: strerror(result)),
                                         cause: SystemCallError("exec \(path)", errno: result))
        }
        self.pid = pid
        self.stdinFD = stdinWrite
        let name = (executable as NSString).lastPathComponent
        self.stdout = stdoutRead.map { FDReader(fd: $0, name: "\(name)-\(pid)-out", gathering: gathering) }
        self.stderr = stderrRead.map { FDReader(fd: $0, name: "\(name)-\(pid)-err", gathering: gathering) }
        let latch = exit
        let childPID = pid
        let waiter = Thread {
            let raw = vouch_wait(childPID)
            let status: ExitStatus =
                raw < 0 ? .exited(-1)
                : vouch_signaled(raw) != 0 ? .signaled(vouch_term_signal(raw))
                : .exited(vouch_exit_status(raw))
            _ = ChildProcess.registry.withLock { $0.removeValue(forKey: childPID) }
            latch.set(status)
        }
        waiter.name = "vouch-wait-\(pid)"
        waiter.start()
    }

    deinit {
        if exit.value == nil { Glibc.kill(-pid, SIGKILL) }
        if let fd = stdinFD { close(fd) }
    }

    /// The exit status, or nil while the process runs.
    package var exitStatus: ExitStatus? { exit.value }

    /// Waits until the process has exited.
    /// - Throws: `.cancelled` if the waiting task is cancelled.
    package func waitForExit() async throws(VouchError) -> ExitStatus {
        switch await exit.wait() {
        case .value(let status): return status
        case .timedOut, .cancelled: throw VouchError.cancelled("cancelled while waiting for \(executable) (pid \(pid)) to exit")
        }
    }

    /// Waits until the process has exited, at most until `deadline`; nil if it has not.
    /// - Throws: `.cancelled`.
    package func waitForExit(until deadline: Deadline) async throws(VouchError) -> ExitStatus? {
        switch await exit.wait(until: deadline) {
        case .value(let status): return status
        case .timedOut: return nil
        case .cancelled: throw VouchError.cancelled("cancelled while waiting for \(executable) (pid \(pid)) to exit")
        }
    }

    /// Sends `signal` to the child's whole process group.
    package func signal(_ signal: Int32) {
        guard exit.value == nil else { return }
        Glibc.kill(-pid, signal)
    }

    /// Ends the process group: SIGTERM, then SIGKILL after `grace` seconds.
    /// Returns once the process has been reaped, or 3 s after the SIGKILL at
    /// the latest (nil then: it is stuck in the kernel). Never throws, runs
    /// to the end even in a cancelled task; safe to call twice.
    @discardableResult
    package func terminate(grace: Double = 2) async -> ExitStatus? {
        if let done = exit.value { return done }
        signal(SIGTERM)
        // A stopped process cannot act on SIGTERM until continued.
        signal(SIGCONT)
        if case .value(let status) = await exit.wait(until: Deadline(seconds: grace), ignoringCancellation: true) {
            Glibc.kill(-pid, SIGKILL)  // stragglers in the group
            return status
        }
        return await kill()
    }

    /// SIGKILL to the process group; returns once reaped (at most 3 s, nil if not).
    @discardableResult
    package func kill() async -> ExitStatus? {
        Glibc.kill(-pid, SIGKILL)
        if case .value(let status) = await exit.wait(until: Deadline(seconds: 3), ignoringCancellation: true) { return status }
        return nil
    }

    /// Runs a program to completion and returns its status and its stdout and
    /// stderr interleaved as they arrived. It is killed after `timeout` seconds.
    /// - Throws: `.spawnFailed`; `.timeout` naming the command line and
    ///   carrying its output so far; `.cancelled` (the program is killed first).
    package static func run(
        _ executable: String, _ arguments: [String], environment: [String: String]? = nil,
        workingDirectory: String? = nil, timeout: Double = 60
    ) async throws(VouchError) -> (status: ExitStatus, output: String) {
        let process = try ChildProcess(executable, arguments, environment: environment, workingDirectory: workingDirectory)
        let output = OutputCollector()
        let drains = [process.stdout!, process.stderr!].map { reader in Task { await output.drain(reader.queue) } }
        let status: ExitStatus?
        do {
            status = try await process.waitForExit(until: Deadline(seconds: timeout))
        } catch {
            await process.kill()
            throw error
        }
        guard let status else {
            await process.kill()
            throw VouchError(.timeout, "`\(([executable] + arguments).joined(separator: " "))` did not finish within \(formatSeconds(timeout)); killed it",
                             outputTail: tail(output.text))
        }
        for drain in drains { _ = try? await withDeadline(seconds: 2) { await drain.value } }
        return (status, output.text)
    }

    /// Resolves a program name against PATH.
    package static func resolve(_ executable: String) -> String? {
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

    // MARK: - Every live child

    /// Live children by pid (each leads its own process group).
    private static let registry = Mutex<[pid_t: String]>([:])

    /// The live children, pid and program.
    package static var live: [(pid: Glibc.pid_t, program: String)] {
        registry.withLock { $0.map { ($0.key, $0.value) } }
    }

    /// SIGKILLs the process group of every live child at once: the last
    /// resort when a graceful teardown ran out of time, or on a second
    /// Ctrl-C. Returns how many groups were signalled.
    @discardableResult
    package static func killEverything() -> Int {
        let pids = registry.withLock { Array($0.keys) }
        for pid in pids { Glibc.kill(-pid, SIGKILL) }
        return pids.count
    }
}

/// Accumulates a process's output as text.
package final class OutputCollector: Sendable {
    private let bytes = Mutex<[UInt8]>([])

    package init() {}

    /// Appends everything `queue` delivers until it ends.
    package func drain(_ queue: ByteQueue) async {
        while let chunk = try? await queue.next() {
            append(chunk)
        }
    }

    /// Appends `chunk`.
    package func append(_ chunk: [UInt8]) { bytes.withLock { $0.append(contentsOf: chunk) } }

    /// Everything so far, decoded as UTF-8.
    package var text: String { String(decoding: bytes.withLock { $0 }, as: UTF8.self) }
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
