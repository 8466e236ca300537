import ArgumentParser
import Foundation
import Vouch

struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a spec and check a test script without booting anything.",
        discussion: """
            Checks everything `vouch run` checks before a machine boots: the spec's keys and \
            values, machine names (length, characters, clashes once they are script \
            variables, keywords of the script's language), images and start scripts, and what \
            each backend needs on this host. A Swift script is type-checked (and its build \
            cached for `vouch run`); a Python script is parsed by python3, then checked as \
            nixpkgs checks it: linted by pyflakes (the driver's globals as builtins) and \
            type-checked by mypy against typed stubs of Vouch's Python API for this spec's \
            machines, each problem as `script:line: message`. Without pyflakes or mypy \
            (Debian: python3-pyflakes, mypy) `vouch check` fails; `vouch run` warns and \
            skips. Exit status 2 on any problem; nothing is started.
            """)

    @OptionGroup var source: TestSource

    @Option(name: .long, help: "The test script to check (.swift or .py).")
    var script: String?

    @Option(name: .long, help: "Accelerator the run would use: auto, kvm or tcg.")
    var accel: String?

    @OptionGroup var pythonChecks: PythonCheckOptions

    func run() async throws {
        do throws(VouchError) {
            let testSpec: TestSpec
            var label: String
            if let config = source.config {
                testSpec = try NixpkgsConfig.load(URL(fileURLWithPath: config)).spec
                label = "config \(config)"
            } else {
                testSpec = try TestSpec.load(URL(fileURLWithPath: source.spec!))
                label = "spec \(source.spec!)"
            }
            let language: NodeNames.ScriptLanguage? = script.map { $0.hasSuffix(".py") ? .python : .swift }
            // The same checks as `vouch run` makes before anything boots.
            try testSpec.check(accelerator: accel.flatMap(Accelerator.Choice.init(rawValue:)), script: language)
            label += ": \(testSpec.machines.count) machine(s): \(testSpec.machines.map { "\($0.name) (\($0.backend))" }.joined(separator: ", "))"
            print(label)
            if let script, script.hasSuffix(".py") {
                let url = URL(fileURLWithPath: script).standardizedFileURL
                try await PythonScript.checkSyntax(url)
                let began = ContinuousClock.now
                let warnings = try await PythonScript.checkScript(url, shownAs: script, spec: testSpec,
                                                                  checks: pythonChecks.checks(failOnMissingTools: true))
                for warning in warnings { writeStderr("warning: \(warning)\n") }
                let took = String(format: "%.2f s", (ContinuousClock.now - began).seconds)
                print("script \(script): OK (parsed by python3\(pythonChecks.summary), \(took))")
            } else if let script {
                let url = URL(fileURLWithPath: script).standardizedFileURL
                let began = ContinuousClock.now
                let (_, cached) = try await ScriptCompiler().compile(script: url, machines: testSpec.machines.map(\.name))
                print("script \(script): OK (\(cached ? "cached" : "compiled in \(ContinuousClock.now - began)"))")
            }
        } catch {
            fail(error)
        }
    }
}

/// nixpkgs' `skipLint` and `skipTypeCheck`, for `vouch check` and `vouch run`.
struct PythonCheckOptions: ParsableArguments {
    @Flag(name: .long, help: "Python scripts: do not lint with pyflakes (nixpkgs' skipLint).")
    var skipLint = false

    @Flag(name: .long, help: "Python scripts: do not type-check with mypy (nixpkgs' skipTypeCheck).")
    var skipTypeCheck = false

    func checks(failOnMissingTools: Bool) -> PythonScript.Checks {
        PythonScript.Checks(lint: !skipLint, typeCheck: !skipTypeCheck, failOnMissingTools: failOnMissingTools)
    }

    /// What was checked, for the OK line.
    var summary: String {
        (skipLint ? "" : ", linted by pyflakes") + (skipTypeCheck ? "" : ", type-checked by mypy")
    }
}
