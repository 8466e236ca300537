import ArgumentParser
import Foundation
import Vouch

struct Repl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Open an interactive session on a test's machines.",
        discussion: """
            A Python prompt (the nixpkgs driver's names) with every machine bound as a \
            variable. Nothing boots until you ask: start_all(), or any command on a \
            machine (machine.succeed("uname -a") boots it first). \
            <machine>.shell_interact() opens a real shell on the guest: Ctrl-C interrupts \
            the command running there, Ctrl-D returns to the prompt. With --script (or a \
            --config carrying a test_script), test_script() runs the script. Ctrl-D at the \
            prompt ends the session and tears everything down. Same as `vouch run -I`.
            """)

    @OptionGroup var source: TestSource

    @Option(name: .long, help: "A nixpkgs Python test script that test_script() runs.")
    var script: String?

    @OptionGroup var common: CommonRunOptions

    func validate() throws {
        if let script, !script.hasSuffix(".py") { throw ValidationError("the session is Python: --script must be a .py file") }
    }

    func run() async throws {
        let run = try Run.parse(source.arguments
            + (script.map { ["--script", $0] } ?? []) + ["-I"] + common.arguments())
        try await run.run()
    }
}
