import Foundation
import Glibc
import Testing

@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// The `Machine` API on the PTY fake: the same code paths as on QEMU, from
/// `execute` down to `GuestShell`.
@Suite struct MachineTests {
    @Test func bootsLazilyOnTheFirstCommand() async throws {
        try await withFakeMachine { fake in
            let m = fake.machine
            #expect(await m.booted == false)
            #expect(fake.backendsMade.count == 0)
            #expect(try await m.succeed("echo hello") == "hello\n")
            #expect(await m.booted == true)
            #expect(await m.isUp())
            #expect(await m.lastBootSeconds != nil)
            _ = try await m.succeed("true")
            #expect(fake.backendsMade.count == 1)
        }
    }

    @Test func succeedConcatenatesOutputs() async throws {
        try await withFakeMachine { fake in
            #expect(try await fake.machine.succeed("echo a", "printf b", "echo c") == "a\nbc\n")
            let r = try await fake.machine.execute("echo out; exit 5")
            #expect(r.status == 5)
            #expect(r.text == "out\n")
        }
    }

    @Test func succeedFailureNamesMachineCommandStatusAndOutput() async throws {
        try await withFakeMachine(name: "server") { fake in
            let command = "for i in $(seq 1 30); do echo line-$i; done; exit 7"
            let error = await expectVouchError(.commandFailed) {
                try await fake.machine.succeed("true", command)
            }
            let e = try #require(error)
            #expect(e.machine == "server")
            #expect(e.command == command)
            #expect(e.status == 7)
            #expect(e.location?.file.hasSuffix("MachineTests.swift") == true)
            let text = e.description
            // nixpkgs' wording, which scripts match on, with Vouch's detail below it.
            #expect(text.contains("server: command `\(command)` failed (exit code 7)"))
            #expect(text.contains("\n  exit status: 7"))
            #expect(text.contains("    | line-30"))
            #expect(!text.contains("| line-10\n"), "the tail keeps the last 20 lines only")
        }
    }

    @Test func failReturnsOutputOrThrows() async throws {
        try await withFakeMachine { fake in
            let output = try await fake.machine.fail("echo nope; false")
            #expect(output == "nope\n")
            let error = await expectVouchError(.commandSucceeded) {
                try await fake.machine.fail("false", "echo surprise")
            }
            #expect(error?.command == "echo surprise")
            #expect(error?.description.contains("command `echo surprise` unexpectedly succeeded") == true)
            #expect(error?.outputTail == "surprise")
        }
    }

    @Test func commandTimeoutThroughMachine() async throws {
        try await withFakeMachine(name: "slow") { fake in
            let error = await expectVouchError(.timeout) {
                try await fake.machine.succeed("sleep 20", timeout: 0.5)
            }
            #expect(error?.machine == "slow")
            #expect(error?.description.contains("timed out after 0.5 s") == true)
            let next = try await fake.machine.succeed("echo next")
            #expect(next == "next\n")
        }
    }

    // MARK: Waits

    @Test func waitUntilSucceedsForAFileThatAppearsLater() async throws {
        try await withFakeMachine { fake in
            let path = "/tmp/flag-\(UUID().uuidString)"
            try await fake.machine.succeed("(sleep 0.7; echo ready > \(path)) >/dev/null 2>&1 &")
            try await fake.machine.fail("test -e \(path)")
            let output = try await fake.machine.waitUntilSucceeds("cat \(path)", timeout: 10)
            #expect(output == "ready\n")
            try await fake.machine.succeed("(sleep 0.5; rm \(path)) >/dev/null 2>&1 &")
            _ = try await fake.machine.waitUntilFails("test -e \(path)", timeout: 10)
            try await fake.machine.fail("test -e \(path)")
        }
    }

    @Test func waitForFile() async throws {
        try await withFakeMachine { fake in
            let path = "/tmp/wait-\(UUID().uuidString)"
            try await fake.machine.succeed("(sleep 0.5; touch \(path)) >/dev/null 2>&1 &")
            try await fake.machine.waitForFile(path, timeout: 10)
            try await fake.machine.succeed("test -e \(path) && rm \(path)")
            let error = await expectVouchError(.timeout) { try await fake.machine.waitForFile(path, timeout: 0.5) }
            #expect(error?.message.hasPrefix("action timed out after ") == true)
            #expect(error?.message.contains(" seconds (timeout=0.5): waiting for file \(path)") == true, "\(String(describing: error))")
            #expect(error?.outputTail?.contains("does not exist") == true)
        }
    }

    @Test func waitTimeoutsCarryTheLastSeenState() async throws {
        try await withFakeMachine(name: "w") { fake in
            var error = await expectVouchError(.timeout) {
                try await fake.machine.waitUntilSucceeds("echo progress-report; exit 4", timeout: 0.8)
            }
            #expect(error?.description.contains("w: action timed out after ") == true)
            #expect(error?.description.contains(" seconds (timeout=0.8): waiting for `echo progress-report; exit 4` to succeed") == true,
                    "\(String(describing: error))")
            #expect(error?.outputTail?.contains("exit status 4") == true)
            #expect(error?.outputTail?.contains("progress-report") == true)
            error = await expectVouchError(.timeout) {
                try await fake.machine.waitUntilFails("echo still-fine", timeout: 0.5)
            }
            #expect(error?.outputTail?.contains("exit status 0") == true)
            #expect(error?.outputTail?.contains("still-fine") == true)
        }
    }

    @Test func waitForOpenAndClosedPort() async throws {
        try await withFakeMachine { fake in
            let listener = try TCPListener()
            let port = listener.port
            try await fake.machine.waitForOpenPort(port, timeout: 10)
            Task {
                try await Task.sleep(for: .milliseconds(500))
                listener.close()
            }
            try await fake.machine.waitForClosedPort(port, timeout: 10)
            try await fake.machine.fail(Machine.portProbe("localhost", port))
        }
    }

    @Test func waitForOpenPortTimesOut() async throws {
        try await withFakeMachine(name: "p") { fake in
            let reserved = try TCPListener(listening: false)  // bound, not listening: refused, and nobody else gets it
            defer { reserved.close() }
            let error = await expectVouchError(.timeout) {
                try await fake.machine.waitForOpenPort(reserved.port, timeout: 1)
            }
            #expect(error?.message.contains("(timeout=1.0): waiting for TCP port localhost:\(reserved.port) to open") == true)
            #expect(error?.outputTail?.contains("refused or unreachable") == true)

            let open = try TCPListener()
            defer { open.close() }
            let closedError = await expectVouchError(.timeout) {
                try await fake.machine.waitForClosedPort(open.port, timeout: 0.5)
            }
            #expect(closedError?.outputTail?.contains("still accepts connections") == true)
        }
    }

    @Test func consoleGetsStderr() async throws {
        try await withFakeMachine { fake in
            try await fake.machine.succeed("echo 'serial says hi' >&2")
            let text = try await fake.machine.waitForConsoleText("serial says h.", timeout: 5)
            #expect(text == "serial says hi")
            #expect(await fake.machine.getConsoleLog().contains("serial says hi"))
        }
    }

    /// A console line still arriving is not matched: `marker-\d+` waits for
    /// `marker-42`, not the `marker-4` that came first.
    @Test func consoleWaitsMatchCompleteLinesOnly() async throws {
        try await withFakeMachine { fake in
            let console = fake.context.console
            console.feed(Array("boot marker-4".utf8))
            let waiter = Task { try await fake.machine.waitForConsoleText("marker-\\d+", timeout: 10) }
            try await Task.sleep(for: .milliseconds(300))
            console.feed(Array("2 done\n".utf8))
            #expect(try await waiter.value == "marker-42")
            #expect(console.recentText.hasSuffix("boot marker-42 done\n"))
            console.feed(Array("prompt> ".utf8))
            #expect(console.recentText.hasSuffix("prompt> "))
            #expect(console.text(from: 0).text.hasSuffix("done\n"))
        }
    }

    // MARK: Files through the shared directory

    @Test(.enabled("needs a private mount namespace for /tmp/shared", isolation))
    func copyFromHostAndBack() async throws {
        try await withFakeMachine { fake in
            let dir = makeTempDirectory()
            defer { removeTree(dir) }
            var bytes = (0...255).map { UInt8($0) }
            bytes += Array(repeating: 0, count: 100_000) + Array("end".utf8)
            try Data(bytes).write(to: URL(fileURLWithPath: dir + "/blob"))
            try await fake.machine.copyFromHost(dir + "/blob", to: "/tmp/deep/er/blob")
            #expect(try await fake.machine.succeed("stat -c %s /tmp/deep/er/blob") == "\(bytes.count)\n")
            // The staging directory is gone from the shared directory.
            #expect(try FileManager.default.contentsOfDirectory(atPath: fake.context.sharedDirectory).isEmpty)
            // It really went through /tmp/shared (the guest's /tmp is private).
            #expect(!FileManager.default.fileExists(atPath: "/tmp/deep/er/blob") || fake.backend?.guestTmp == nil)

            try await fake.machine.succeed("mkdir -p /tmp/out && cp /tmp/deep/er/blob /tmp/out/result.bin && echo extra > /tmp/out/note")
            let url = try await fake.machine.copyFromMachine("/tmp/out/result.bin", to: "copies")
            #expect(url.path == fake.outputDirectory.appendingPathComponent("copies/result.bin").path)
            #expect(try Array(Data(contentsOf: url)) == bytes)
            let dirURL = try await fake.machine.copyFromMachine("/tmp/out")
            #expect(try String(contentsOf: dirURL.appendingPathComponent("note"), encoding: .utf8) == "extra\n")
            #expect(try FileManager.default.contentsOfDirectory(atPath: fake.context.sharedDirectory).isEmpty)
        }
    }

    @Test func copyFromMachineOfAMissingFileFails() async throws {
        try await withFakeMachine { fake in
            let error = await expectVouchError(.commandFailed) {
                try await fake.machine.copyFromMachine("/nonexistent/\(UUID().uuidString)")
            }
            #expect(error?.status != 0)
        }
    }

    // MARK: Lifecycle

    @Test func guestDyingMidCommandIsMachineDownAndTheNextCommandBootsAgain() async throws {
        try await withFakeMachine(name: "fragile") { fake in
            let pid = try await fake.machine.succeed("echo $$")
            let error = await expectVouchError(.machineDown) { try await fake.machine.succeed("kill -9 $$") }
            #expect(error?.description.contains("fragile: the machine went away while running a command (pty-fake killed by signal 9)") == true,
                    "\(String(describing: error))")
            #expect(error?.command == "kill -9 $$")
            #expect(await fake.machine.booted == false)
            #expect(await fake.machine.isUp() == false)
            // Like the Python driver: any later command starts the machine again.
            let newPID = try await fake.machine.succeed("echo $$")
            #expect(newPID != pid)
            #expect(fake.backendsMade.count == 2)
        }
    }

    @Test func crashThenRestart() async throws {
        try await withFakeMachine { fake in
            try await fake.machine.start()
            let running = Task { try await fake.machine.succeed("sleep 30") }
            try await Task.sleep(for: .milliseconds(300))
            try await fake.machine.crash()
            let error = await expectVouchError { _ = try await running.value }
            // The shell was marked lost before the process died, so either is a clear answer.
            #expect(error?.kind == .machineDown || error?.kind == .protocolError, "\(String(describing: error))")
            #expect(await fake.machine.isUp() == false)
            #expect(try await fake.machine.succeed("echo back") == "back\n")
            #expect(fake.backendsMade.count == 2)
        }
    }

    @Test func sendKeyIsUnsupported() async throws {
        try await withFakeMachine { fake in
            try await fake.machine.start()
            let error = await expectVouchError(.unsupported) { try await fake.machine.sendKey("ctrl-alt-delete") }
            #expect(error?.message.contains("ctrl-alt-delete") == true)
        }
    }

    @Test func monitorCommandsNeedQEMU() async throws {
        try await withFakeMachine { fake in
            let error = await expectVouchError(.unsupported) { try await fake.machine.sendMonitorCommand("info status") }
            #expect(error?.message == "sendMonitorCommand is not supported by the pty-fake backend", "\(String(describing: error))")
            #expect(error?.machine == fake.machine.name && error?.command == "info status")
        }
    }

    @Test func bootTimeoutNamesTheMachine() async throws {
        try await withFakeMachine(name: "sluggish", bootTimeout: 0.5, options: .init(bootDelay: 5)) { fake in
            let error = await expectVouchError(.bootFailed) { try await fake.machine.succeed("true") }
            #expect(error?.description.contains("sluggish: the backdoor shell did not come up within 0.5 s") == true,
                    "\(String(describing: error))")
        }
    }

    @Test func concurrentStartsShareOneBoot() async throws {
        try await withFakeMachine(options: .init(bootDelay: 0.3)) { fake in
            try await withThrowingTaskGroup(of: String.self) { group in
                for i in 0..<5 { group.addTask { try await fake.machine.succeed("echo \(i)") } }
                var outputs: [String] = []
                for try await output in group { outputs.append(output) }
                #expect(outputs.sorted() == (0..<5).map { "\($0)\n" })
            }
            #expect(fake.backendsMade.count == 1)
        }
    }

    @Test func releaseStopsTheGuestAndRemovesItsState() async throws {
        let fake = makeFakeMachine()
        let pid = try await fake.machine.succeed("echo $$").trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(FileManager.default.fileExists(atPath: fake.context.stateDirectory))
        await fake.machine.release(keepState: false)
        #expect(kill(pid_t(pid)!, 0) == -1)
        #expect(!FileManager.default.fileExists(atPath: fake.context.stateDirectory))
        #expect(fake.backend?.exitStatus != nil)
        removeTree(fake.directory)
    }
}

/// A TCP socket on 127.0.0.1 and a free port, listening or merely bound.
final class TCPListener: Sendable {
    let fd: Int32
    let port: Int

    init(listening: Bool = true) throws {
        (fd, port) = try LoopbackTCP.bind(backlog: listening ? 64 : nil)
    }

    func close() { Glibc.close(fd) }
}
