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

    /// Which of nixpkgs' checks `checkScript` makes (its `skipLint` and
    /// `skipTypeCheck`), and what a missing tool means.
    public struct Checks: Sendable {
        /// pyflakes, with the driver's globals as builtins.
        public var lint = true
        /// mypy against stubs generated from the Python layer.
        public var typeCheck = true
        /// Without pyflakes or mypy: fail (`vouch check`), or warn and skip (`vouch run`).
        public var failOnMissingTools = true
        public init(lint: Bool = true, typeCheck: Bool = true, failOnMissingTools: Bool = true) {
            self.lint = lint
            self.typeCheck = typeCheck
            self.failOnMissingTools = failOnMissingTools
        }
    }

    /// Lints (pyflakes) and type-checks (mypy) `script` as nixpkgs does before
    /// a test runs, against typed stubs of the globals it would see with
    /// `spec`'s machines and VLANs (`vouch_driver.checks`).
    /// - Returns: warnings (a tool missing, skipped).
    /// - Throws: `.invalidSpec` with one `script:line: message` line per
    ///   problem; `.spawnFailed` when a tool is missing and `checks` says fail.
    public static func checkScript(_ script: URL, shownAs shown: String? = nil, spec: TestSpec,
                                   checks: Checks = Checks()) async throws(VouchError) -> [String] {
        if !checks.lint && !checks.typeCheck { return [] }
        let package = try packageDirectory()
        let python = ProcessInfo.processInfo.environment["VOUCH_PYTHON"] ?? "python3"
        var environment = ProcessInfo.processInfo.environment
        environment["PYTHONPATH"] = ([package.path] + [environment["PYTHONPATH"]].compactMap { $0 }).joined(separator: ":")
        environment["PYTHONDONTWRITEBYTECODE"] = "1"
        environment["PYTHONSAFEPATH"] = "1"
        let vlans = (try? NetworkPlan(machines: spec.machines.map { ($0.name, $0.vlans) }).vlans) ?? []
        let hello: JSONValue = [
            "machines": .array(spec.machines.map { ["name": .string($0.name), "backend": .string($0.backend)] }),
            "vlans": .array(vlans.map { ["nr": .number(Double($0))] }),
            "globalTimeout": .number(spec.globalTimeout),
        ]
        var arguments = ["-m", "vouch_driver.checks", "--hello", String(decoding: (try? JSONEncoder().encode(hello)) ?? Data("{}".utf8), as: UTF8.self),
                         "--missing-tools", checks.failOnMissingTools ? "fail" : "warn", "--name", shown ?? script.path]
        if !checks.lint { arguments.append("--skip-lint") }
        if !checks.typeCheck { arguments.append("--skip-type-check") }
        arguments.append(script.path)
        let (status, output) = try await ChildProcess.run(python, arguments, environment: environment, timeout: 300)
        let lines = output.split(separator: "\n").map(String.init)
        let warnings = lines.filter { $0.hasPrefix("warning: ") }.map { String($0.dropFirst("warning: ".count)) }
        let problems = lines.filter { !$0.hasPrefix("warning: ") }
        switch status {
        case .exited(0): return warnings
        case .exited(1):
            throw VouchError(.invalidSpec, "test script \(shown ?? script.path) does not pass the checks "
                             + "(pyflakes, mypy; --skip-lint, --skip-type-check to skip them):\n" + problems.joined(separator: "\n"))
        case .exited(3):
            throw VouchError(.spawnFailed, warnings.joined(separator: "; "))
        default:
            throw VouchError(.spawnFailed, "the script checks (python3 -m vouch_driver.checks) failed: \(status)", outputTail: tail(output, lines: 20))
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
