import ArgumentParser
import Dispatch
import Foundation
import Vouch

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot a test's machines and run its script.",
        discussion: """
            The script is type-checked before any machine boots. Exit status: 0 passed, \
            1 failed, 143 global timeout, 130 interrupted. Everything is torn down in every \
            case: machine processes end and the run directory is removed (unless -K).
            """)

    @Argument(help: "The test spec (JSON). See README \"Test specs\".")
    var spec: String?

    @Option(name: .long, help: "nixpkgs driverConfiguration JSON instead of a spec.")
    var config: String?

    @Option(name: .long, help: "A Swift test script.")
    var script: String?

    @OptionGroup var common: CommonRunOptions

    func validate() throws {
        if spec == nil && config == nil { throw ValidationError("give a spec file or --config") }
        if spec != nil && config != nil { throw ValidationError("give either a spec file or --config, not both") }
    }

    func run() async throws {
        let testSpec: TestSpec
        do {
            if let config {
                let nix = try NixpkgsConfig.load(URL(fileURLWithPath: config))
                if script == nil, nix.testScript != nil {
                    throw VouchError(.unsupported, "\(config) carries a Python test_script; Python test scripts are not supported by Vouch yet (pass a Swift --script)")
                }
                testSpec = nix.spec
            } else {
                testSpec = try TestSpec.load(URL(fileURLWithPath: spec!))
            }
        } catch let error as VouchError {
            fail(error)
        }
        var body: @Sendable (Driver) async throws -> Void = { driver in try await driver.startAll() }
        if let script {
            let url = URL(fileURLWithPath: script).standardizedFileURL
            do {
                let began = ContinuousClock.now
                let (library, cached) = try await ScriptCompiler().compile(script: url, machines: testSpec.machines.map(\.name))
                let took = ContinuousClock.now - began
                FileHandle.standardError.write(Data("script \(url.lastPathComponent): \(cached ? "cached build" : "compiled in \(took)")\n".utf8))
                body = try TestScript.load(library: library).body
            } catch let error as VouchError {
                fail(error)
            }
        }
        let driver: Driver
        do {
            driver = try Driver(spec: testSpec, options: common.runOptions())
        } catch let error as VouchError {
            fail(error)
        }
        let outcome = await runHandlingSignals(driver, body)
        FileHandle.standardError.write(Data("log: \(common.outputDirectory)/vouch.log\njunit: \(common.junitXML ?? common.outputDirectory + "/junit.xml")\n".utf8))
        throw ExitCode(outcome.exitStatus)
    }
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

    func runOptions() throws -> RunOptions {
        var options = RunOptions(outputDirectory: URL(fileURLWithPath: outputDirectory))
        options.junitXML = junitXML.map { URL(fileURLWithPath: $0) }
        options.keepState = keepVmState
        options.globalTimeout = globalTimeout
        if let accel {
            guard let choice = Accelerator.Choice(rawValue: accel) else {
                throw ValidationError("--accel must be auto, kvm or tcg")
            }
            options.accelerator = choice
        }
        return options
    }
}

/// Runs the driver; SIGINT/SIGTERM cancel the run, which then tears down.
func runHandlingSignals(_ driver: Driver, _ body: @escaping @Sendable (Driver) async throws -> Void) async -> RunOutcome {
    signal(SIGINT, SIG_IGN)
    signal(SIGTERM, SIG_IGN)
    let task = Task { await driver.run(body) }
    let sources = [SIGINT, SIGTERM].map { sig in
        let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        source.setEventHandler {
            driver.log.error("received \(sig == SIGINT ? "SIGINT" : "SIGTERM"); stopping the test")
            task.cancel()
        }
        source.resume()
        return source
    }
    let outcome = await task.value
    sources.forEach { $0.cancel() }
    return outcome
}

func fail(_ error: VouchError) -> Never {
    FileHandle.standardError.write(Data("error: \(error)\n".utf8))
    Foundation.exit(error.kind == .invalidSpec || error.kind == .missingImage || error.kind == .unsupported ? 2 : 1)
}
