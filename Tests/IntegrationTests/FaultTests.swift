import Foundation
import Glibc
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// Faults on real guests: each ends in a clear error and leaves nothing behind.
@Suite(.serialized)
struct FaultTests {
    @Test func guestKernelPanicMidTest() async throws {
        let run = try await RealRun.run([guest("machine")]) { d in
            let m = try d.machine("machine")
            try await m.succeed("true")
            let error = await #expect(throws: VouchError.self) {
                try await m.succeed("echo c > /proc/sysrq-trigger; sleep 60")
            }
            #expect(error?.kind == .machineDown)
            #expect(error?.machine == "machine")
            #expect(error?.command?.contains("sysrq-trigger") == true)
            #expect(error?.message.contains("the guest kernel panicked: Kernel panic - not syncing: sysrq triggered crash") == true,
                    "message: \(error?.message ?? "")")
            #expect(error?.outputTail?.isEmpty == false, "the error should carry the console tail")
            let up = await m.isUp()
            #expect(up == false)
        }
        #expect(run.outcome == .passed)
    }

    @Test func qemuKilledMidCommand() async throws {
        let run = try await RealRun.run([guest("machine")]) { d in
            let m = try d.machine("machine")
            try await m.succeed("true")
            let qemu = processes(mentioning: d.runDirectory).filter { $0.contains("qemu-system") }
            try #require(qemu.count == 1, "expected one QEMU: \(qemu)")
            let pid = pid_t(qemu[0].prefix { $0 != ":" })!
            let killer = Task {
                try await Task.sleep(for: .seconds(1))
                kill(pid, SIGKILL)
            }
            let error = await #expect(throws: VouchError.self) { try await m.succeed("sleep 60") }
            _ = try? await killer.value
            #expect(error?.kind == .machineDown)
            #expect(error?.message.contains("killed by signal 9") == true, "message: \(error?.message ?? "")")
        }
        #expect(run.outcome == .passed)
    }

    @Test func backdoorNeverAppears() async throws {
        // The kernel boots but init is `sleep`: no backdoor ever prints its banner.
        let silent = guest("machine", bootTimeout: 10, cmdline: "rdinit=/bin/sleep -- 1000")
        let run = try await RealRun.run([silent]) { d in
            let error = await #expect(throws: VouchError.self) { try await d.startAll() }
            #expect(error?.kind == .bootFailed)
            #expect(error?.message.contains("did not come up within 10 s") == true)
            #expect(error?.outputTail?.isEmpty == false, "the error should carry the console tail")
        }
        #expect(run.outcome == .passed)
    }

    @Test func oneMachineFailingToBootFailsStartAllAndStopsTheOthers() async throws {
        let run = try await RealRun.run([
            guest("good"), guest("bad", bootTimeout: 10, cmdline: "rdinit=/bin/sleep -- 1000"),
        ]) { d in
            try await d.startAll()
        }
        guard case .failed(let text) = run.outcome else {
            Issue.record("expected a failed run, got \(run.outcome)")
            return
        }
        #expect(text.contains("bad: the backdoor shell did not come up"))
        try? FileManager.default.removeItem(at: run.driver.options.outputDirectory)
    }

    @Test func missingImageFailsBeforeAnythingStarts() async throws {
        var q = QEMUSettings()
        q.kernel = "/nonexistent/vmlinux"
        let m = MachineSpec(name: "machine", qemu: q)
        let before = runDirectories()
        let error = #expect(throws: VouchError.self) {
            _ = try Driver(spec: TestSpec(name: "missing", machines: [m]), options: RunOptions(outputDirectory: RealRun.outputDirectory("missing")))
        }
        #expect(error?.kind == .missingImage)
        #expect(error?.description.contains("/nonexistent/vmlinux") == true)
        #expect(runDirectories() == before)
    }
}

/// Vouch run directories under /tmp right now.
func runDirectories() -> Set<String> {
    let base = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
    let pattern = /^vouch-[0-9]+-[A-Za-z0-9]{6}$/
    return Set((try? FileManager.default.contentsOfDirectory(atPath: base))?.filter { $0.wholeMatch(of: pattern) != nil } ?? [])
}
