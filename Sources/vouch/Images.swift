import ArgumentParser
import Foundation
import Vouch

struct Images: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Build or list the built-in guest images.",
        discussion: """
            Images are built from Debian packages by images/build.sh and cached under \
            $VOUCH_IMAGES (default: .cache/images in the checkout), keyed by a hash of \
            the recipe: a rebuild happens only when the recipe changes.
            """,
        subcommands: [Build.self, List.self], defaultSubcommand: List.self)

    struct Build: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Build images (default: all).")

        @Argument(help: "Image names: minimal, systemd, desktop (default: all three).")
        var names: [String] = []

        @Flag(help: "Rebuild even if cached.")
        var force = false

        func run() async throws {
            guard let script = ImageStore.buildScript else {
                throw ValidationError("cannot find images/build.sh; set VOUCH_IMAGE_RECIPE")
            }
            var env = ProcessInfo.processInfo.environment
            env["VOUCH_IMAGES"] = ImageStore.defaultRoot.path
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/bash")
            process.arguments = [script.path] + (force ? ["--force"] : []) + (names.isEmpty ? ["all"] : names)
            process.environment = env
            try process.run()
            process.waitUntilExit()
            if process.terminationStatus != 0 { throw ExitCode(process.terminationStatus) }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show which images are built.")

        func run() throws {
            let root = ImageStore.defaultRoot
            print("image store: \(root.path)")
            for name in GuestImage.builtIn {
                if let image = try? GuestImage.resolve(name) {
                    print("  \(name): \(image.directory.path)")
                } else {
                    print("  \(name): not built (vouch images build \(name))")
                }
            }
        }
    }
}
