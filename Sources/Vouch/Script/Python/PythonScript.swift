internal import CVouch
import Foundation
import Glibc
import VouchBackends
import VouchSupport

/// A nixpkgs-style Python test script, run unchanged by the real Python 3
/// interpreter against a Vouch `Driver`.
///
/// The interpreter runs Vouch's thin `vouch_driver` package (in `python/`),
/// which gives the script the nixpkgs globals and relays every call over a
/// socket pair (fd 3) to `BridgeServer`; booting, commands, waits, logging
/// and JUnit all happen here.
public struct PythonScript: Sendable {
    /// The script file, or nil for an interactive session without one.
    public var path: URL?
    /// Opens an interactive prompt (`vouch repl`) instead of running the script.
    public var interactive: Bool

    /// A script to run, or with `interactive` a session (the script then runs on `test_script()`).
    public init(path: URL?, interactive: Bool = false) {
        self.path = path
        self.interactive = interactive
    }

    /// Runs the script (or the session) to its end.
    /// - Throws: `.assertionFailed` with the script's traceback when the
    ///   script raises; `.spawnFailed` without Python or the `vouch_driver`
    ///   package; `.cancelled` (the interpreter is killed first).
    public func run(in driver: Driver) async throws(VouchError) {
        let package = try Self.packageDirectory()
        let python = ProcessInfo.processInfo.environment["VOUCH_PYTHON"] ?? "python3"
        var environment = ProcessInfo.processInfo.environment
        environment["PYTHONPATH"] = ([package.path] + [environment["PYTHONPATH"]].compactMap { $0 }).joined(separator: ":")
        environment["VOUCH_BRIDGE_FD"] = "3"
        environment["PYTHONDONTWRITEBYTECODE"] = "1"
        // `-m` would put the working directory first on sys.path, where a
        // test script called copy.py or json.py would shadow the stdlib.
        environment["PYTHONSAFEPATH"] = "1"
        var arguments = ["-u", "-m", "vouch_driver", interactive ? "repl" : "run"]
        if let path { arguments.append(path.path) }

        let (ours, theirs): (Int32, Int32)
        do { (ours, theirs) = try UnixSocket.pair() } catch {
            throw VouchError(.spawnFailed, "cannot create the Python bridge's socket pair", cause: error)
        }
        let process: ChildProcess
        do throws(VouchError) {
            process = interactive
                ? try ChildProcess(python, arguments, environment: environment, pipes: [], inheritedFD: theirs,
                                   standardStreams: (0, 1, 2), foreground: isatty(0) == 1)
                : try ChildProcess(python, arguments, environment: environment, pipes: [.stdout, .stderr], inheritedFD: theirs)
        } catch {
            close(theirs)
            close(ours)
            throw error
        }
        close(theirs)
        let server = BridgeServer(driver: driver, socket: ours, script: path)
        if interactive {
            // The prompt owns the terminal: no status line, and guest consoles
            // only in the log file until serial_stdout_on().
            driver.log.disableStatusLine()
            driver.log.showSerialOnTerminal(false)
        }
        defer { if interactive { _ = vouch_take_terminal(0) } }
        let forwarders = [
            process.stdout.map { out in Task { await forwardLines(out.queue) { driver.log.log($0) } } },
            process.stderr.map { err in Task { await forwardLines(err.queue) { server.noteStandardError($0) } } },
        ].compactMap { $0 }
        do {
            try await server.serve()
        } catch {
            await process.terminate(grace: 1)
            for forwarder in forwarders { _ = try? await withDeadline(seconds: 1) { await forwarder.value } }
            throw error
        }
        // The interpreter closes the bridge as it exits; give it a moment to finish.
        let status: ExitStatus
        if let exited = try? await process.waitForExit(until: Deadline(seconds: 10)) {
            status = exited
        } else {
            status = await process.terminate(grace: 1) ?? .signaled(SIGKILL)
        }
        // Stray children of the script would keep its output open.
        await process.kill()
        for forwarder in forwarders { _ = try? await withDeadline(seconds: 2) { await forwarder.value } }
        try server.outcome(status: status, script: path?.lastPathComponent ?? "the interactive session")
    }

    /// Parses `script` with the interpreter, without running it.
    /// - Throws: `VouchError.invalidSpec` with Python's message (file and line).
    public static func checkSyntax(_ script: URL) async throws(VouchError) {
        let python = ProcessInfo.processInfo.environment["VOUCH_PYTHON"] ?? "python3"
        let (status, output) = try await ChildProcess.run(
            python, ["-c", "import ast, sys; ast.parse(open(sys.argv[1], encoding='utf-8').read(), sys.argv[1])", script.path])
        guard status == .exited(0) else {
            throw VouchError(.invalidSpec, "test script \(script.path) does not parse", outputTail: tail(output, lines: 12))
        }
    }

    /// Where the `vouch_driver` package is: `$VOUCH_PYTHON_PATH`, then
    /// `python/` next to libVouch.so (installed), then the source checkout's.
    /// - Throws: `VouchError.spawnFailed` listing where it looked.
    static func packageDirectory() throws(VouchError) -> URL {
        var candidates: [URL] = []
        if let env = ProcessInfo.processInfo.environment["VOUCH_PYTHON_PATH"], !env.isEmpty {
            candidates.append(URL(fileURLWithPath: env))
        }
        if let lib = vouch_library_path().map({ String(cString: $0) }) {
            candidates.append(URL(fileURLWithPath: lib).resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("python"))
        }
        if let checkout = ImageStore.sourceCheckout { candidates.append(checkout.appendingPathComponent("python")) }
        if let found = candidates.first(where: {
            FileManager.default.fileExists(atPath: $0.appendingPathComponent("vouch_driver/__main__.py").path)
        }) {
            return found
        }
        throw VouchError(.spawnFailed, "cannot find Vouch's Python package vouch_driver (looked in \(candidates.map(\.path).joined(separator: ", ")); set VOUCH_PYTHON_PATH)")
    }
}

/// Calls `body` with each line from `queue` until it ends.
func forwardLines(_ queue: ByteQueue, _ body: @Sendable (String) -> Void) async {
    var splitter = LineSplitter()
    while let chunk = try? await queue.next() {
        splitter.append(chunk)
        while let line = splitter.next() { body(String(decoding: line, as: UTF8.self)) }
    }
    let rest = splitter.remainder
    if !rest.isEmpty { body(String(decoding: rest, as: UTF8.self)) }
}
