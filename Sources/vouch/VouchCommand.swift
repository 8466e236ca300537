import ArgumentParser
import Foundation
import Vouch

/// `vouch` and its subcommands (the entry point is `Entry`).
struct VouchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vouch",
        abstract: "Run NixOS-style integration tests on QEMU virtual machines.",
        discussion: """
            A test is a spec (machines and their images) plus a script that drives \
            them through a root shell in each guest. Start with:

              vouch images build            build the default guest images
              vouch run SPEC --script T     boot the machines and run the test
                                            (T: test.swift, or a nixpkgs test.py)
              vouch repl SPEC               interactive Python session on the machines
              vouch check SPEC --script T   type-check a script without booting
              vouch bench                   measure boot and command round trips
            """,
        subcommands: [Run.self, Repl.self, Check.self, Images.self, Bench.self])
}
