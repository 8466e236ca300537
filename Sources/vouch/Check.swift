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
            cached for `vouch run`); a Python script is parsed by python3, so syntax errors \
            show up with their line. Exit status 2 on any problem; nothing is started.
            """)

    @OptionGroup var source: TestSource

    @Option(name: .long, help: "The test script to check (.swift or .py).")
    var script: String?

    @Option(name: .long, help: "Accelerator the run would use: auto, kvm or tcg.")
    var accel: String?

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
                try await PythonScript.checkSyntax(URL(fileURLWithPath: script).standardizedFileURL)
                print("script \(script): OK (parsed by python3)")
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
