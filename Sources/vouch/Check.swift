import ArgumentParser
import Foundation
import Vouch

struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a spec and check a test script without booting anything.",
        discussion: """
            A Swift script is type-checked (and its build cached for `vouch run`); a Python \
            script is parsed by python3, so syntax errors show up with their line.
            """)

    @Argument(help: "The test spec (JSON).")
    var spec: String

    @Option(name: .long, help: "The test script to check (.swift or .py).")
    var script: String?

    func run() async throws {
        do {
            let testSpec = try TestSpec.load(URL(fileURLWithPath: spec))
            print("spec \(spec): \(testSpec.machines.count) machine(s): \(testSpec.machines.map(\.name).joined(separator: ", "))")
            if let script, script.hasSuffix(".py") {
                try await PythonScript.checkSyntax(URL(fileURLWithPath: script).standardizedFileURL)
                print("script \(script): OK (parsed by python3)")
            } else if let script {
                let url = URL(fileURLWithPath: script).standardizedFileURL
                let began = ContinuousClock.now
                let (_, cached) = try await ScriptCompiler().compile(script: url, machines: testSpec.machines.map(\.name))
                print("script \(script): OK (\(cached ? "cached" : "compiled in \(ContinuousClock.now - began)"))")
            }
        } catch let error as VouchError {
            fail(error)
        }
    }
}
