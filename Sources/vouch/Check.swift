import ArgumentParser
import Foundation
import Vouch

struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a spec and type-check a Swift test script without booting anything.")

    @Argument(help: "The test spec (JSON).")
    var spec: String

    @Option(name: .long, help: "The Swift test script to type-check.")
    var script: String?

    func run() async throws {
        do {
            let testSpec = try TestSpec.load(URL(fileURLWithPath: spec))
            print("spec \(spec): \(testSpec.machines.count) machine(s): \(testSpec.machines.map(\.name).joined(separator: ", "))")
            if let script {
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
