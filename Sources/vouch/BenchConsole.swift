import ArgumentParser
import Foundation
import Glibc
import Vouch

extension Bench {
    /// A minimal guest prints `megabytes` MB to its serial console: the
    /// driver's resident memory before and after, its CPU time per MB, and
    /// how fast a console wait sees a line printed after the flood.
    func runConsoleFlood(megabytes: Int) async throws {
        let machine = MachineSpec(name: "flood", qemu: QEMUSettings(image: "minimal"))
        let driver = benchDriver(TestSpec(name: "bench-console", globalTimeout: 3600, machines: [machine]))
        let result = FloodResults()
        writeStderr("bench: booting a minimal guest; it then prints \(megabytes) MB to its serial console (~300 KB/s under TCG)…\n")
        let outcome = await ScriptRunner.runHandlingSignals(driver) { d in
            let m = try d.machine("flood")
            try await m.succeed("true")
            result.rssBefore = memoryField("VmRSS") ?? 0
            result.hwmBefore = memoryField("VmHWM") ?? 0
            let cpu = cpuSeconds()
            let began = ContinuousClock.now
            // 100-byte lines of text, straight to the serial console.
            let line = String(repeating: "vouch-console-flood-", count: 5).prefix(99)
            try await m.succeed("awk 'BEGIN { for (i = 0; i < \(megabytes * 10_000); i++) print \"\(line)\" }' > /dev/ttyS0", timeout: 3600)
            result.seconds = (ContinuousClock.now - began).seconds
            result.cpu = cpuSeconds() - cpu
            result.rssAfter = memoryField("VmRSS") ?? 0
            result.hwmAfter = memoryField("VmHWM") ?? 0
            try await m.succeed("echo VOUCH-FLOOD-DONE > /dev/ttyS0")
            let waiting = ContinuousClock.now
            try await m.waitForConsoleText("VOUCH-FLOOD-DONE", timeout: 60)
            result.wait = (ContinuousClock.now - waiting).seconds
        }
        try? FileManager.default.removeItem(at: driver.options.outputDirectory)
        guard outcome == .passed else {
            writeStderr("bench: console flood failed: \(outcome)\n")
            throw ExitCode(1)
        }
        print(table([
            ["console flood", "time", "driver CPU", "CPU per MB", "RSS before", "RSS after", "peak RSS before", "peak RSS after", "wait for a line after it"],
            ["\(megabytes) MB", String(format: "%.1f s", result.seconds), String(format: "%.2f s", result.cpu),
             String(format: "%.0f ms", result.cpu * 1000 / Double(megabytes)), "\(result.rssBefore / 1024) MiB", "\(result.rssAfter / 1024) MiB",
             "\(result.hwmBefore / 1024) MiB", "\(result.hwmAfter / 1024) MiB", ms(result.wait)],
        ]))
        print("accelerator: \(Accelerator.lastResolved?.rawValue.uppercased() ?? "unknown"); the console log file keeps every byte, memory only the last MiB")
    }

    final class FloodResults: @unchecked Sendable {
        var rssBefore = 0, rssAfter = 0, hwmBefore = 0, hwmAfter = 0
        var seconds = 0.0, cpu = 0.0, wait = 0.0
    }
}
