import Foundation
import Glibc
import Testing

@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

@Suite struct ChildProcessTests {
    @Test func noControllingTerminalByDefault() async throws {
        let (status, out) = try await runHost("bash", ["--norc", "-c", "ps -o tty= -p $$; exec 3</dev/tty && echo has-tty || echo no-tty"])
        #expect(status == .exited(0))
        let text = String(decoding: out, as: UTF8.self)
        #expect(text.hasPrefix("?"), "\(text)")
        #expect(text.contains("no-tty"))
    }

    @Test func controllingTerminalNeedsATerminal() async {
        let error = await expectVouchError(.spawnFailed) {
            _ = try ChildProcess("true", [], pipes: [.stdout], controllingTerminal: true)
        }
        #expect(error?.message.contains("cannot start true") == true)
        #expect(error?.message.contains(String(cString: strerror(ENOTTY))) == true, "\(String(describing: error))")
    }

    @Test func exitStatusesAndSignals() async throws {
        #expect(try await runHost("bash", ["-c", "exit 7"]).status == .exited(7))
        #expect(try await runHost("bash", ["-c", "kill -9 $$"]).status == .signaled(SIGKILL))
        let process = try ChildProcess("sleep", ["30"], pipes: [])
        #expect(process.exitStatus == nil)
        let status = await process.terminate(grace: 2)
        #expect(status == .signaled(SIGTERM))
        #expect(process.exitStatus == .signaled(SIGTERM))
    }
}

@Suite struct PTYShellBackendTests {
    /// The fake's guest is set up like NixOS's backdoor on /dev/hvc0.
    @Test func guestLooksLikeTheNixOSBackdoor() async throws {
        try await withFakeShell { shell, backend in
            let ids = try await shell.run("ps -o sid=,pgid=,tpgid=,tty= -p $$; echo $$", timeout: 5).text
            let fields = ids.split(whereSeparator: \.isWhitespace).map(String.init)
            try #require(fields.count == 5, "\(ids)")
            let pid = fields[4]
            #expect(fields[0] == pid, "the backdoor shell is a session leader")
            #expect(fields[1] == pid, "and leads its process group")
            #expect(fields[2] == pid, "which is the terminal's foreground group (^C reaches it)")
            #expect(fields[3].hasPrefix("pts/"))
            #expect(backend.pid.map(String.init) == pid, "the backdoor exec'd in place of the spawned process")
            // The script comes from the tty; stderr is the console pipe; commands get /dev/null.
            let fds = try await shell.run("readlink /proc/$$/fd/0 /proc/$$/fd/1 /proc/$$/fd/2 /proc/self/fd/0", timeout: 5).text
            let links = fds.split(separator: "\n").map(String.init)
            try #require(links.count == 4, "\(fds)")
            #expect(links[0] == "/dev/tty", "opened through the controlling terminal")
            #expect(links[1] == "/dev/tty")
            #expect(links[2].hasPrefix("pipe:"))
            #expect(links[3] == "/dev/null")
            let cmdline = try await shell.run("tr '\\0' ' ' < /proc/$$/cmdline", timeout: 5).text
            #expect(cmdline == "bash --norc /dev/tty ")
            let stty = try await shell.run("stty -a < /dev/tty", timeout: 5).text
            for flag in ["-echo", "-icanon", "-opost", "-icrnl", "isig", "intr = ^C", "quit = ^\\", "noflsh"] {
                #expect(stty.contains(flag), "\(flag) in \(stty)")
            }
        }
    }

    @Test(.enabled("needs a private mount namespace for /tmp/shared", isolation))
    func privateTmpWithSharedDirectory() async throws {
        try await withFakeShell { shell, backend in
            let guestTmp = try #require(backend.guestTmp)
            let marker = "from-host-\(UUID().uuidString)"
            try marker.write(toFile: backend.context.sharedDirectory + "/hello", atomically: true, encoding: .utf8)
            #expect(try await shell.run("cat /tmp/shared/hello", timeout: 5).text == marker)
            _ = try await shell.run("echo guest > /tmp/guest-file", timeout: 5)
            #expect(try String(contentsOfFile: guestTmp + "/guest-file", encoding: .utf8) == "guest\n")
            #expect(!FileManager.default.fileExists(atPath: "/tmp/guest-file"))
            #expect(try await shell.run("pwd", timeout: 5).text == "/tmp\n")
        }
    }

    @Test func stopEndsTheGuestAndIsIdempotent() async throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let backend = PTYShellBackend(context: makeContext(in: dir))
        #expect(backend.exitStatus == nil)
        let error = await expectVouchError(.bootFailed) { _ = try await backend.waitForExit() }
        #expect(error?.message.contains("never started") == true)
        let channel = try await backend.start()
        #expect(backend.exitStatus == nil)
        #expect(!(backend is any KeyInput) && !(backend is any PowerControl), "the fake has no keyboard and no power control")
        await backend.stop(keepState: true)
        #expect(backend.exitStatus == .signaled(SIGKILL))
        #expect(FileManager.default.fileExists(atPath: backend.context.stateDirectory), "keepState keeps it")
        // The channel's input ends (the pty hung up).
        var chunks = 0
        while (try await channel.input.next()) != nil { chunks += 1 }
        await backend.stop(keepState: false)
        #expect(!FileManager.default.fileExists(atPath: backend.context.stateDirectory))
        _ = await expectVouchError(.machineDown) {
            let shell = GuestShell(machine: "guest", channel: channel)
            _ = try await shell.run("true", timeout: 1)
        }
    }
}
