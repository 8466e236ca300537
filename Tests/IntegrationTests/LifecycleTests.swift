import Foundation
import Glibc
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// The pid of machine `name`'s QEMU in the run of `driver`.
func qemuPID(_ driver: Driver, _ name: String) -> pid_t? {
    processes(mentioning: driver.runDirectory + "/vm-state-\(name)")
        .first { $0.contains("qemu-system") }
        .flatMap { pid_t($0.prefix { $0 != ":" }) }
}

/// A frozen VMM (SIGSTOP is how a deadlocked QEMU looks from outside) never
/// hangs a run: every wait ends at its deadline with a reason, and teardown
/// finishes within its limit. Each run is checked for leftovers by `RealRun`.
@Suite(.serialized)
struct FrozenVMMTests {
    @Test func duringACommandWithATimeout() async throws {
        let ended = TimeBox()
        let run = try await RealRun.run([guest("m")]) { d in
            let m = try d.machine("m")
            try await m.succeed("true")
            let pid = try #require(qemuPID(d, "m"))
            kill(pid, SIGSTOP)
            let began = ContinuousClock.now
            let error = await #expect(throws: VouchError.self) { try await m.succeed("true", timeout: 5) }
            let took = (ContinuousClock.now - began).seconds
            print("frozen QEMU: succeed(timeout: 5) raised after \(String(format: "%.2f", took)) s")
            #expect(took < 5 + 5, "raised after \(took) s")
            #expect(error?.kind == .timeout)
            #expect(error?.message.contains("stopped (SIGSTOP or a debugger)") == true, "\(String(describing: error))")
            ended.mark()
            throw error ?? VouchError(.other, "no error")
        }
        let teardown = ended.secondsSince()
        print("frozen QEMU: teardown took \(String(format: "%.2f", teardown)) s")
        #expect(teardown < Driver.teardownLimit + 1, "teardown took \(teardown) s")
        guard case .failed = run.outcome else { Issue.record("expected a failed run, got \(run.outcome)"); return }
        try? FileManager.default.removeItem(at: run.driver.options.outputDirectory)
    }

    @Test func duringBoot() async throws {
        let began = ContinuousClock.now
        let run = try await RealRun.run([guest("m", bootTimeout: 10)]) { d in
            let m = try d.machine("m")
            let stopper = Task {
                while !Task.isCancelled {
                    if let pid = qemuPID(d, "m") { kill(pid, SIGSTOP); return }
                    try? await Task.sleep(for: .milliseconds(20))
                }
            }
            defer { stopper.cancel() }
            let error = await #expect(throws: VouchError.self) { try await m.start() }
            // Stopped before or after QEMU's QMP greeting: either way a boot failure that says QEMU is stopped.
            #expect(error?.kind == .bootFailed)
            #expect(error?.message.contains("stopped (SIGSTOP") == true, "\(String(describing: error))")
        }
        let took = (ContinuousClock.now - began).seconds
        print("frozen QEMU during boot: the run ended after \(String(format: "%.2f", took)) s (boot timeout 10 s)")
        #expect(took < 10 + 5 + Driver.teardownLimit)
        #expect(run.outcome == .passed)
    }

    @Test func duringShutdown() async throws {
        let ended = TimeBox()
        let run = try await RealRun.run([guest("m")]) { d in
            let m = try d.machine("m")
            try await m.succeed("true")
            kill(try #require(qemuPID(d, "m")), SIGSTOP)
            let error = await #expect(throws: VouchError.self) { try await m.shutdown(timeout: 5) }
            #expect(error?.kind == .timeout)
            #expect(error?.message.contains("did not power off within 5 s") == true, "\(String(describing: error))")
            #expect(error?.message.contains("stopped (SIGSTOP") == true, "\(String(describing: error))")
            ended.mark()
        }
        print("frozen QEMU during shutdown: teardown took \(String(format: "%.2f", ended.secondsSince())) s")
        #expect(run.outcome == .passed)
    }
}

/// The same faults seen from the command line: the global timeout as the
/// only deadline, and the driver itself SIGKILLed.
@Suite(.serialized)
struct RunLifecycleCLITests {
    let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vouch-lifecycle-\(getpid())")

    func write(_ name: String, _ text: String) throws -> String {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let url = dir.appendingPathComponent(name)
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    /// Starts `vouch ARGS` and returns the process and its output so far.
    func start(_ args: [String]) throws -> (ChildProcess, OutputCollector, [Task<Void, Never>]) {
        let process = try ChildProcess(vouchBinary, args)
        let output = OutputCollector()
        let drains = [process.stdout!, process.stderr!].map { reader in Task { await output.drain(reader.queue) } }
        return (process, output, drains)
    }

    func waitFor(_ text: String, count: Int = 1, in output: OutputCollector, seconds: Double = 120) async throws {
        try await within(seconds: seconds) {
            while output.text.components(separatedBy: text).count <= count { try await Task.sleep(for: .milliseconds(100)) }
        }
    }

    @Test func globalTimeoutOverAFrozenVMMExits143() async throws {
        let spec = try write("frozen.json", #"{"globalTimeout": 20, "machines": {"m": {"image": "minimal"}}}"#)
        let script = try write("frozen.py", """
            machine.succeed("true")
            machine.sleep(2)
            machine.succeed("echo never answered")
            """)
        let out = dir.appendingPathComponent("out-frozen")
        let before = runDirectories()
        let began = ContinuousClock.now
        let (process, output, drains) = try start(["run", spec, "--script", script, "-o", out.path, "--junit-xml", out.path + "/report.xml"])
        try await waitFor("connected to the guest root shell", in: output)
        let marker = "/vouch-\(process.pid)-"
        let qemu = try #require(processes(mentioning: marker).first { $0.contains("qemu-system") }.flatMap { pid_t($0.prefix { $0 != ":" }) })
        kill(qemu, SIGSTOP)
        let status = try await within(seconds: 60) { try await process.waitForExit() }
        for drain in drains { await drain.value }
        let took = (ContinuousClock.now - began).seconds
        print("global timeout 20 s over a frozen QEMU: \(status) after \(String(format: "%.2f", took)) s")
        #expect(status == .exited(143), "\(output.text.suffix(3000))")
        #expect(took < 20 + 8, "exited after \(took) s")
        #expect(output.text.contains("timeout reached; test terminating..."))
        let junit = try String(contentsOfFile: out.path + "/report.xml", encoding: .utf8)
        #expect(junit.contains("global timeout of 20 s reached"), "\(junit)")
        #expect(processes(mentioning: marker).isEmpty)
        #expect(runDirectories() == before, "the run directory must be removed")
        try? FileManager.default.removeItem(at: dir)
    }

    /// The first Ctrl-C tears down gracefully; a second one kills everything at once.
    @Test func secondInterruptKillsEverythingAtOnce() async throws {
        let spec = try write("two-int.json", #"{"machines": {"a": {"image": "minimal"}, "b": {"image": "systemd"}}}"#)
        let out = dir.appendingPathComponent("out-twice")
        let before = runDirectories()
        let (process, output, drains) = try start(["run", spec, "-o", out.path])
        try await waitFor("started qemu-system", count: 2, in: output)
        let marker = "/vouch-\(process.pid)-"
        kill(process.pid, SIGINT)
        try await waitFor("again to kill everything at once", in: output, seconds: 10)
        kill(process.pid, SIGINT)
        let status = try await within(seconds: 10) { try await process.waitForExit() }
        for drain in drains { await drain.value }
        #expect(status == .exited(130), "\(output.text.suffix(2000))")
        #expect(output.text.contains("received SIGINT again: killing every machine now"))
        var left = processes(mentioning: marker)
        let end = ContinuousClock.now + .seconds(5)
        while !left.isEmpty, ContinuousClock.now < end {
            try await Task.sleep(for: .milliseconds(50))
            left = processes(mentioning: marker)
        }
        #expect(left.isEmpty, "left behind: \(left)")
        #expect(runDirectories() == before, "the run directory goes too")
        try? FileManager.default.removeItem(at: dir)
    }

    @Test func sigkillOfTheDriverTakesEveryMachineAndSwitchWithIt() async throws {
        let spec = try write("two.json", #"{"machines": {"a": {"image": "minimal"}, "b": {"image": "minimal"}}}"#)
        let script = try write("two.py", "start_all()\nmachine_a = a\nmachine_a.sleep(600)\n")
        let out = dir.appendingPathComponent("out-kill")
        let (process, output, drains) = try start(["run", spec, "--script", script, "-o", out.path])
        try await waitFor("connected to the guest root shell", count: 2, in: output)
        let marker = "/vouch-\(process.pid)-"
        let running = processes(mentioning: marker)
        #expect(running.filter { $0.contains("qemu-system") }.count == 2, "\(running)")
        #expect(running.contains { $0.contains("vde_switch") }, "\(running)")
        kill(process.pid, SIGKILL)
        _ = try await within(seconds: 10) { try await process.waitForExit() }
        let killed = ContinuousClock.now
        var left = processes(mentioning: marker)
        while !left.isEmpty, (ContinuousClock.now - killed).seconds < 5 {
            try await Task.sleep(for: .milliseconds(50))
            left = processes(mentioning: marker)
        }
        print("SIGKILL of vouch run: its QEMUs and switch were gone \(String(format: "%.2f", (ContinuousClock.now - killed).seconds)) s later")
        #expect(left.isEmpty, "left behind: \(left)")
        for drain in drains { drain.cancel() }
        // The next run sweeps the directory the killed one could not remove.
        let base = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
        let abandoned = ((try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []).filter { $0.hasPrefix("vouch-\(process.pid)-") }
        #expect(abandoned.count == 1, "the killed run's directory: \(abandoned)")
        Driver.removeAbandonedRunDirectories(in: base)
        #expect(!((try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []).contains { $0.hasPrefix("vouch-\(process.pid)-") })
        try? FileManager.default.removeItem(at: dir)
    }
}

/// A command's output is what that command wrote, as in nixpkgs: the
/// answer waits for what the command left running with its stdout open.
@Suite(.serialized)
struct OutputAttributionTests {
    @Test func backgroundOutputBelongsToItsCommand() async throws {
        let run = try await RealRun.run([guest("m")]) { d in
            let m = try d.machine("m")
            let late = try await m.execute("(sleep 1; echo LATE) &")
            #expect(late.text == "LATE\n" && late.waitedForLeftovers)
            #expect(try await m.succeed("echo hi") == "hi\n")
            // nixpkgs' own driver test: both lines belong to the command.
            #expect(try await m.succeed("(echo ONE; sleep 15; echo TWO) &") == "ONE\nTWO\n")
            #expect(try await m.succeed("echo after") == "after\n")
            // Detached output is not waited for, and the machine still answers.
            let detached = try await m.execute("sleep 300 >/dev/null 2>&1 &")
            #expect(detached.status == 0 && !detached.waitedForLeftovers && detached.output.isEmpty)
            #expect(try await m.succeed("echo next") == "next\n")
            // A deadline covers the wait; the leftover is killed, and the next command is clean.
            let error = await #expect(throws: VouchError.self) { try await m.succeed("(sleep 1000; echo NEVER) &", timeout: 3) }
            #expect(error?.kind == .timeout)
            #expect(try await m.succeed("echo clean") == "clean\n")
            #expect(try await m.succeed("pgrep -f 'sleep 1000' || echo none") == "none\n")
            let log = try String(contentsOf: d.options.outputDirectory.appendingPathComponent("vouch.log"), encoding: .utf8)
            #expect(log.contains("`(sleep 1; echo LATE) &`: the command exited, but a process it started kept its stdout open"))
            #expect(log.contains("`… >&2 &`") && log.contains("systemd-run"))
            #expect(!log.contains("`sleep 300 >/dev/null 2>&1 &`: the command exited"))
        }
        #expect(run.outcome == .passed)
    }
}

/// A guest flooding its serial console: memory stays bounded, the console
/// log file has every byte, and a console wait still sees a later line.
@Suite(.serialized)
struct ConsoleFloodTests {
    @Test func twentyMegabytesOfConsoleOutput() async throws {
        let run = try await RealRun.run([guest("m")]) { d in
            let m = try d.machine("m")
            try await m.succeed("true")
            let before = memoryKB("VmRSS")
            // 200 000 lines of 100 bytes, straight to the serial console.
            let line = String(repeating: "vouch-console-flood-", count: 5).prefix(99)
            try await m.succeed("awk 'BEGIN { for (i = 0; i < 200000; i++) print \"\(line)\" }' > /dev/ttyS0", timeout: 900)
            let after = memoryKB("VmRSS")
            print("console flood of 20 MB: RSS \(before / 1024) MiB before, \(after / 1024) MiB after")
            #expect(after - before < 12 * 1024, "RSS grew from \(before) kB to \(after) kB")
            try await m.succeed("echo VOUCH-AFTER-FLOOD > /dev/ttyS0")
            let found = try await m.waitForConsoleText("VOUCH-AFTER-FLOOD", timeout: 10)
            #expect(found == "VOUCH-AFTER-FLOOD")
            let file = d.options.outputDirectory.appendingPathComponent("console-m.log").path
            let size = (try FileManager.default.attributesOfItem(atPath: file)[.size] as? NSNumber)?.intValue ?? 0
            #expect(size > 20_000_000, "the console log file has \(size) bytes")
        }
        #expect(run.outcome == .passed)
    }
}

/// QEMU pauses a guest whose disk cannot be written: the waiting command
/// fails at once with the reason, not at the end of its timeout.
@Suite(.serialized)
struct VMMFaultTests {
    @Test func fullDiskUnderTheRunDirectory() async throws {
        let mount = NSTemporaryDirectory() + "vouch-fulldisk-\(getpid())"
        try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
        let (status, output) = try await ChildProcess.run("mount", ["-t", "tmpfs", "-o", "size=48m", "tmpfs", mount])
        try #require(status == .exited(0), "cannot mount a tmpfs: \(output)")
        defer {
            _ = try? Process.run(URL(fileURLWithPath: "/bin/umount"), arguments: [mount]).waitUntilExit()
            try? FileManager.default.removeItem(atPath: mount)
        }
        var options = RunOptions(outputDirectory: RealRun.outputDirectory("fullDisk"))
        options.quiet = ProcessInfo.processInfo.environment["VOUCH_TEST_LOG"] == nil
        options.temporaryDirectory = mount
        let driver = try Driver(spec: TestSpec(name: "full-disk", machines: [guest("m", image: "systemd")]), options: options)
        let outcome = await driver.run { d in
            let m = try d.machine("m")
            try await m.succeed("true")
            let began = ContinuousClock.now
            let error = await #expect(throws: VouchError.self) {
                try await m.succeed("dd if=/dev/urandom of=/root/big bs=1M count=200 conv=fsync", timeout: 300)
            }
            print("full disk: the command failed after \(String(format: "%.2f", (ContinuousClock.now - began).seconds)) s: \(error?.message ?? "")")
            #expect(error?.kind == .machineDown)
            #expect(error?.message.contains("paused: disk I/O error on the root overlay") == true, "\(String(describing: error))")
            #expect(error?.message.contains("no space left in \(mount)") == true, "\(String(describing: error))")
            #expect(error?.command?.contains("dd if=/dev/urandom") == true)
            #expect(!(await m.isUp()))
        }
        #expect(outcome == .passed, "\(outcome)")
        #expect(!FileManager.default.fileExists(atPath: driver.runDirectory))
        #expect(processes(mentioning: driver.runDirectory).isEmpty)
        if outcome == .passed { try? FileManager.default.removeItem(at: options.outputDirectory) }
    }
}

/// A STOP that Vouch did not ask for (here: `stop` typed into the QEMU
/// monitor's socket by someone else) is noticed from QMP: the next command
/// fails at once, saying so. A `stop` the script sends through Vouch is a
/// pause it asked for.
@Suite(.serialized)
struct UnrequestedPauseTests {
    @Test func aGuestPausedBehindVouchsBackFailsAtOnce() async throws {
        let run = try await RealRun.run([guest("m")]) { d in
            let m = try d.machine("m")
            try await m.succeed("true")
            try await m.sendMonitorCommand("stop")
            try await m.sendMonitorCommand("cont")
            #expect(try await m.succeed("echo still-fine", timeout: 60) == "still-fine\n")
            let monitor = try await HumanMonitorClient.connect(path: d.runDirectory + "/vm-state-m/monitor", machine: "outsider")
            defer { monitor.close() }
            _ = try await monitor.transcript("stop")
            let error = await #expect(throws: VouchError.self) { try await m.succeed("true", timeout: 120) }
            #expect(error?.kind == .machineDown)
            #expect(error?.message.contains("paused: QEMU stopped the guest (status paused) without Vouch asking") == true,
                    "\(String(describing: error))")
        }
        #expect(run.outcome == .passed)
    }
}

/// `(kB)` field of this process's /proc status.
func memoryKB(_ field: String) -> Int {
    let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix(field + ":") } ?? ""
    return Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "") ?? 0
}

/// A moment to measure from, set inside a run's script.
final class TimeBox: @unchecked Sendable {
    private var instant = ContinuousClock.now
    func mark() { instant = .now }
    func secondsSince() -> Double { (ContinuousClock.now - instant).seconds }
}
