import ArgumentParser
import Foundation
import Glibc
import Vouch

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot a test's machines and run its script.",
        discussion: """
            The script is either Swift (test.swift: type-checked before any machine boots, \
            then run as its own process linked against the Vouch library) or a nixpkgs \
            Python test script (test.py, or the test_script of a --config file), run \
            unchanged by python3 with the nixpkgs driver's globals, after the checks `vouch \
            check` makes (pyflakes, mypy; --skip-lint, --skip-type-check; a missing tool is a \
            warning here, not an error). Without a script, all \
            machines are booted and shut down again (a boot check). With -I, an \
            interactive Python session opens instead (see `vouch repl`). Exit status: \
            0 passed, 1 failed, 2 bad spec or script, 130 interrupted, 143 global \
            timeout. Everything is torn down in every case: machine processes end and \
            the run directory is removed (unless -K).
            """)

    @OptionGroup var source: TestSource

    @Option(name: .long, help: "The test script: Swift (.swift) or nixpkgs Python (.py).")
    var script: String?

    @Flag(name: [.customShort("I"), .long], help: "Open an interactive session instead of running the script.")
    var interactive = false

    @OptionGroup var common: CommonRunOptions

    @OptionGroup var pythonChecks: PythonCheckOptions

    func run() async throws {
        var request = common.request()
        request.specPath = source.spec.map(absolute)
        request.configPath = source.config.map(absolute)
        let testSpec: TestSpec
        var python: PythonSource?
        do throws(VouchError) {
            testSpec = try request.loadSpec()
            if let script, script.hasSuffix(".py") {
                python = .file(URL(fileURLWithPath: absolute(script)))
            } else if let config = source.config, script == nil, let text = try NixpkgsConfig.load(URL(fileURLWithPath: config)).testScript {
                python = FileManager.default.fileExists(atPath: text) ? .file(URL(fileURLWithPath: text)) : .inline(text)
            }
            if let python, case .file(let url) = python, !FileManager.default.fileExists(atPath: url.path) {
                throw VouchError(.invalidSpec, "test script \(url.path) does not exist")
            }
            if interactive, let script, !script.hasSuffix(".py") {
                throw VouchError(.invalidSpec, "the interactive session is Python; \(script) is not a .py script")
            }
            let language: NodeNames.ScriptLanguage? = interactive || python != nil ? .python : script != nil ? .swift : nil
            request.scriptLanguage = language.map { $0 == .python ? "python" : "swift" }
            // Everything that can be checked before a machine boots, once.
            try testSpec.check(accelerator: request.accelerator.flatMap(Accelerator.Choice.init(rawValue:)), script: language)
            // nixpkgs' lint and type check, before anything boots (a missing tool: a warning).
            if let python, !interactive {
                let (url, temporary) = try python.checkable()
                defer { if temporary { try? FileManager.default.removeItem(at: url) } }
                let shown = script ?? "test_script of \(source.config ?? "the config")"
                for warning in try await PythonScript.checkScript(url, shownAs: shown, spec: testSpec,
                                                                  checks: pythonChecks.checks(failOnMissingTools: false)) {
                    writeStderr("warning: \(warning)\n")
                }
            }
        } catch {
            fail(error)
        }
        if interactive, common.globalTimeout == nil {
            // As in nixpkgs, a session is not cut short by the test's global timeout.
            request.globalTimeout = 1e9
        }
        if interactive || python != nil {
            let source = python
            let session = interactive
            throw ExitCode(await ScriptRunner.run(request) { driver in
                try await PythonScript(path: try source?.file(in: driver), interactive: session).run(in: driver)
            })
        }
        guard let script else {
            throw ExitCode(await ScriptRunner.run(request) { driver in try await driver.startAll() })
        }
        await runSwift(script: script, request: request, machines: testSpec.machines.map(\.name))
    }

    private func runSwift(script: String, request: RunRequest, machines: [String]) async {
        let url = URL(fileURLWithPath: script).standardizedFileURL
        let compiled: (library: URL, cached: Bool)
        let began = ContinuousClock.now
        do throws(VouchError) {
            compiled = try await ScriptCompiler().compile(script: url, machines: machines)
        } catch {
            fail(error)
        }
        let took = String(format: "%.2f s", (ContinuousClock.now - began).seconds)
        writeStderr("script \(url.lastPathComponent): \(compiled.cached ? "cached build" : "compiled in \(took)")\n")
        let executable = compiled.library
        guard let json = try? JSONEncoder().encode(request) else { fail(VouchError(.other, "cannot encode the run request")) }
        setenv(RunRequest.environmentKey, String(decoding: json, as: UTF8.self), 1)
        let cArgs = [strdup(executable.path), nil]
        execv(executable.path, cArgs)
        fail(VouchError(.spawnFailed, "cannot run the compiled script \(executable.path)", cause: SystemCallError("execv \(executable.path)")))
    }
}

/// Where a Python test script comes from.
enum PythonSource: Sendable {
    case file(URL)
    /// The script text itself (a driver configuration's `test_script`).
    case inline(String)

    /// A file to check the script in: the script's own, or inline text in a temporary file (true).
    func checkable() throws(VouchError) -> (URL, Bool) {
        switch self {
        case .file(let url): return (url, false)
        case .inline(let text):
            let url = FileManager.default.temporaryDirectory.appendingPathComponent("vouch-testScript-\(getpid()).py")
            try vouching("cannot write the test script to \(url.path)") { try text.write(to: url, atomically: true, encoding: .utf8) }
            return (url, true)
        }
    }

    /// A file holding the script (inline text is written into the run directory).
    func file(in driver: Driver) throws(VouchError) -> URL {
        switch self {
        case .file(let url): return url
        case .inline(let text):
            let url = URL(fileURLWithPath: driver.runDirectory).appendingPathComponent("testScript.py")
            try vouching("cannot write the test script to \(url.path)") { try text.write(to: url, atomically: true, encoding: .utf8) }
            return url
        }
    }
}

/// Where the test comes from: a spec, or a nixpkgs driver configuration.
struct TestSource: ParsableArguments {
    @Argument(help: "The test spec (JSON). See README \"Spec reference\".")
    var spec: String?

    @Option(name: .long, help: "nixpkgs driverConfiguration JSON instead of a spec.")
    var config: String?

    func validate() throws {
        if spec == nil && config == nil { throw ValidationError("give a spec file or --config") }
        if spec != nil && config != nil { throw ValidationError("give either a spec file or --config, not both") }
    }

    /// These options as command-line arguments again.
    var arguments: [String] { (spec.map { [$0] } ?? []) + (config.map { ["--config", $0] } ?? []) }
}

/// Options shared by `run` and `bench`.
struct CommonRunOptions: ParsableArguments {
    @Option(name: [.customShort("o"), .long], help: "Output directory for the log, JUnit XML and copied files.")
    var outputDirectory = "vouch-out"

    @Option(name: .long, help: "Also write the JUnit XML report here.")
    var junitXML: String?

    @Flag(name: [.customShort("K"), .long], help: "Keep machine state directories after the run.")
    var keepVmState = false

    @Option(name: .long, help: "Override the spec's global timeout (seconds).")
    var globalTimeout: Double?

    @Option(name: .long, help: "Accelerator: auto (probe KVM, else TCG), kvm or tcg. Also $VOUCH_ACCEL.")
    var accel: String?

    @Flag(name: .long, help: "Start machines from a cached snapshot taken after an earlier run's boot, or boot and cache one ($VOUCH_SNAPSHOTS, default ~/.cache/vouch/snapshots).")
    var snapshotAfterBoot = false

    func validate() throws {
        if let accel, Accelerator.Choice(rawValue: accel) == nil {
            throw ValidationError("--accel must be auto, kvm or tcg")
        }
    }

    /// These options as command-line arguments again (for `repl` → `run -I`).
    func arguments() -> [String] {
        var args = ["--output-directory", outputDirectory]
        if let junitXML { args += ["--junit-xml", junitXML] }
        if keepVmState { args.append("--keep-vm-state") }
        if let globalTimeout { args += ["--global-timeout", String(globalTimeout)] }
        if let accel { args += ["--accel", accel] }
        if snapshotAfterBoot { args.append("--snapshot-after-boot") }
        return args
    }

    func request() -> RunRequest {
        var r = RunRequest()
        r.outputDirectory = absolute(outputDirectory)
        r.junitXML = junitXML.map(absolute)
        r.keepState = keepVmState
        r.globalTimeout = globalTimeout
        r.accelerator = accel
        r.snapshotAfterBoot = snapshotAfterBoot
        return r
    }
}

func absolute(_ path: String) -> String {
    URL(fileURLWithPath: path).standardizedFileURL.path
}

func writeStderr(_ text: String) {
    FileHandle.standardError.write(Data(text.utf8))
}

func fail(_ error: VouchError) -> Never {
    writeStderr("error: \(error)\n")
    Foundation.exit(error.kind == .invalidSpec || error.kind == .missingImage || error.kind == .unsupported ? 2 : 1)
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
