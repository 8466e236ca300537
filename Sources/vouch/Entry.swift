import ArgumentParser
import Foundation

/// Vouch's entry point: `vouch ...`, or nixpkgs' driver command line when
/// the executable is called `nixos-test-driver` (a link or a copy).
@main
enum Entry {
    static func main() async {
        let argv = CommandLine.arguments
        if (argv.first.map { ($0 as NSString).lastPathComponent }) == NixpkgsDriverCommand.name {
            await NixpkgsDriverCommand.main(Array(argv.dropFirst()))
        }
        await VouchCommand.main()
    }
}
