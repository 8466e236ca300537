import ArgumentParser
import Foundation
import Glibc
import Vouch

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot a test's machines and run its script.",
        discussion: """
            The script is type-checked before any machine boots, then runs as its own \
            process linked against the Vouch library. Without --script, all machines are \
            booted and shut down again (a boot check). Exit status: 0 passed, 1 failed, \
            2 bad spec or script, 130 interrupted, 143 global timeout. Everything is torn \
            down in every case: machine processes end and the run directory is removed \
            (unless -K).
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
        var request = common.request()
        request.specPath = spec.map(absolute)
        request.configPath = config.map(absolute)
        let testSpec: TestSpec
        do {
            testSpec = try request.loadSpec()
            if let config, script == nil, try NixpkgsConfig.load(URL(fileURLWithPath: config)).testScript != nil {
                throw VouchError(.unsupported, "\(config) carries a Python test_script; Python test scripts are not supported by Vouch yet (pass a Swift --script)")
            }
        } catch let error as VouchError {
            fail(error)
        }
        guard let script else {
            throw ExitCode(await ScriptRunner.run(request) { driver in try await driver.startAll() })
        }
        let url = URL(fileURLWithPath: script).standardizedFileURL
        let executable: URL
        do {
            let began = ContinuousClock.now
            let (built, cached) = try await ScriptCompiler().compile(script: url, machines: testSpec.machines.map(\.name))
            let took = String(format: "%.2f s", (ContinuousClock.now - began).seconds)
            writeStderr("script \(url.lastPathComponent): \(cached ? "cached build" : "compiled in \(took)")\n")
            executable = built
        } catch let error as VouchError {
            fail(error)
        }
        let json = String(decoding: try JSONEncoder().encode(request), as: UTF8.self)
        setenv(RunRequest.environmentKey, json, 1)
        let argv = [executable.path]
        let cArgs = argv.map { strdup($0) } + [nil]
        execv(executable.path, cArgs)
        fail(VouchError(.spawnFailed, "cannot run the compiled script \(executable.path): \(String(cString: strerror(errno)))"))
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

    @Flag(name: .long, help: "Start machines from a cached snapshot taken after an earlier run's boot, or boot and cache one ($VOUCH_SNAPSHOTS, default ~/.cache/vouch/snapshots).")
    var snapshotAfterBoot = false

    func validate() throws {
        if let accel, Accelerator.Choice(rawValue: accel) == nil {
            throw ValidationError("--accel must be auto, kvm or tcg")
        }
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
