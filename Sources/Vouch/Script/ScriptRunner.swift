internal import CVouch
import Dispatch
import Foundation
import Glibc
import Synchronization
import VouchBackends
import VouchSupport

/// What to run: passed from `vouch run` to a compiled test script in the
/// environment variable `VOUCH_RUN_REQUEST` (JSON).
public struct RunRequest: Codable, Sendable {
    /// The spec file, or nil with `configPath`.
    public var specPath: String?
    /// A nixpkgs driver configuration instead of a spec.
    public var configPath: String?
    /// Where the log, JUnit report and copied files go.
    public var outputDirectory: String = "vouch-out"
    /// An extra path for the JUnit XML report.
    public var junitXML: String?
    /// Keep the machines' state directories (`-K`).
    public var keepState = false
    /// Overrides the spec's global timeout (seconds).
    public var globalTimeout: Double?
    /// `auto`, `kvm` or `tcg`, overriding the spec.
    public var accelerator: String?
    /// See `RunOptions.snapshotAfterBoot`.
    public var snapshotAfterBoot = false
    /// The script's language (`swift` or `python`), for the node-name checks.
    public var scriptLanguage: String?

    /// The environment variable the request travels in.
    public static let environmentKey = "VOUCH_RUN_REQUEST"

    /// A request with the defaults; set a spec or config path.
    public init() {}

    /// Loads the spec (or nixpkgs config) the request names.
    /// - Throws: `VouchError.invalidSpec` / `.unsupported`.
    public func loadSpec() throws(VouchError) -> TestSpec {
        if let configPath {
            return try NixpkgsConfig.load(URL(fileURLWithPath: configPath)).spec
        }
        guard let specPath else { throw VouchError(.invalidSpec, "no spec file given") }
        return try TestSpec.load(URL(fileURLWithPath: specPath))
    }

    /// The driver options this request asks for.
    /// - Throws: `VouchError.invalidSpec` for an unknown accelerator.
    public func runOptions() throws(VouchError) -> RunOptions {
        var options = RunOptions(outputDirectory: URL(fileURLWithPath: outputDirectory))
        options.junitXML = junitXML.map { URL(fileURLWithPath: $0) }
        options.keepState = keepState
        options.globalTimeout = globalTimeout
        options.snapshotAfterBoot = snapshotAfterBoot
        if let accelerator {
            guard let choice = Accelerator.Choice(rawValue: accelerator) else {
                throw VouchError(.invalidSpec, "unknown accelerator '\(accelerator)' (auto, kvm or tcg)")
            }
            options.accelerator = choice
        }
        switch scriptLanguage {
        case "swift": options.scriptLanguage = .swift
        case "python": options.scriptLanguage = .python
        default: break
        }
        return options
    }
}

/// Runs a test end to end: spec, driver, script, signals, teardown, exit status.
public enum ScriptRunner {
    /// The entry point of a compiled test script: reads the request from
    /// the environment, runs `body`, and exits with the outcome's status.
    public static func main(_ body: @escaping @Sendable (Driver) async throws -> Void) async -> Never {
        // Keep the script's print() in step with the log when stdout is a pipe.
        vouch_line_buffer_stdout()
        guard let json = ProcessInfo.processInfo.environment[RunRequest.environmentKey],
              let request = try? JSONDecoder().decode(RunRequest.self, from: Data(json.utf8))
        else {
            writeStandardError("error: this is a compiled Vouch test script; run it with `vouch run SPEC --script FILE`\n")
            exit(2)
        }
        exit(await run(request, body))
    }

    /// Runs `body` for `request` and returns the exit status (0, 1, 2 for a
    /// bad spec, 130 interrupted, 143 global timeout).
    public static func run(_ request: RunRequest, _ body: @escaping @Sendable (Driver) async throws -> Void) async -> Int32 {
        let driver: Driver
        do {
            driver = try Driver(spec: try request.loadSpec(), options: try request.runOptions())
        } catch {
            writeStandardError("error: \(error)\n")
            return 2
        }
        let outcome = await runHandlingSignals(driver, body)
        let out = driver.options.outputDirectory.path
        writeStandardError("log: \(out)/vouch.log\njunit: \(driver.options.junitXML?.path ?? out + "/junit.xml")\n")
        return outcome.exitStatus
    }

    /// Runs the driver. Signals are handled here, in one place: the first
    /// SIGINT or SIGTERM cancels the run, which then tears down (bounded);
    /// a second one kills every child at once and exits.
    public static func runHandlingSignals(_ driver: Driver, _ body: @escaping @Sendable (Driver) async throws -> Void) async -> RunOutcome {
        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        let task = Task { await driver.run(body) }
        let received = Mutex(0)
        let sources = [SIGINT, SIGTERM].map { sig in
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                let name = sig == SIGINT ? "SIGINT" : "SIGTERM"
                let count = received.withLock { n in n += 1; return n }
                if count == 1 {
                    driver.log.error("received \(name); stopping the test (again to kill everything at once)")
                    task.cancel()
                } else {
                    driver.log.error("received \(name) again: killing every machine now")
                    driver.log.close()
                    Driver.killEverything()
                    _exit(RunOutcome.interrupted.exitStatus)
                }
            }
            source.resume()
            return source
        }
        let outcome = await task.value
        sources.forEach { $0.cancel() }
        return outcome
    }
}
