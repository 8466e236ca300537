import ArgumentParser
import Foundation
@_spi(Benchmark) import Vouch

extension Bench {
    /// A desktop guest boots to X; then it shows a line of text on tty1 and,
    /// on that same screen, `rounds` times each: a screenshot, one OCR pass,
    /// and the three OCR variants run at once and one after another.
    func runScreens(rounds: Int) async throws {
        var machine = MachineSpec(name: "screen", qemu: QEMUSettings(image: "desktop"))
        machine.qemu?.graphics = true
        let driver = benchDriver(TestSpec(name: "bench-screens", globalTimeout: 3600, machines: [machine]))
        let result = ScreenResults()
        writeStderr("bench: booting the desktop guest to X…\n")
        let outcome = await ScriptRunner.runHandlingSignals(driver) { d in
            let m = try d.machine("screen")
            let began = ContinuousClock.now
            try await m.waitForX(timeout: 900)
            result.boot = (ContinuousClock.now - began).seconds
            try await m.succeed("chvt 1; printf '\\033[2J\\033[H\\n\\n   the quick brown fox reads the vouch screen\\n' > /dev/tty1")
            let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("vouch-bench-screen-\(getpid()).png").path
            defer { try? FileManager.default.removeItem(atPath: scratch) }
            writeStderr("bench: up in \(String(format: "%.1f", result.boot)) s; \(rounds) rounds of screenshot and OCR…\n")
            for _ in 0..<rounds {
                result.screenshot += (try await timed(1) { _ = try await m.screenshot(scratch) })
                result.single += (try await timed(1) { _ = try await m.screenText() })
                result.parallel += (try await timed(1) { _ = try await m.screenTextVariants() })
                result.sequential += (try await timed(1) { _ = try await m.screenTextVariantsInSequence() })
            }
        }
        try? FileManager.default.removeItem(at: driver.options.outputDirectory)
        guard outcome == .passed else {
            writeStderr("bench: screens failed: \(outcome)\n")
            throw ExitCode(1)
        }
        let parallel = percentile(result.parallel, 0.5), sequential = percentile(result.sequential, 0.5)
        print(table([
            ["screens (1024x768, median of \(rounds))", "boot to X", "screenshot (PNG)", "OCR, one pass", "OCR variants at once", "one after another", "at once / after another"],
            ["desktop image, tty1", String(format: "%.1f s", result.boot), ms(percentile(result.screenshot, 0.5)), ms(percentile(result.single, 0.5)),
             ms(parallel), ms(sequential), String(format: "%.2f", parallel / sequential)],
        ]))
        print("accelerator: \(Accelerator.lastResolved?.rawValue.uppercased() ?? "unknown"); each OCR time includes its screenshot; \(ProcessInfo.processInfo.activeProcessorCount) cores")
    }

    final class ScreenResults: @unchecked Sendable {
        var boot = 0.0
        var screenshot: [Double] = [], single: [Double] = [], parallel: [Double] = [], sequential: [Double] = []
    }
}
