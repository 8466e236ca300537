import ArgumentParser
import Foundation
import Vouch

extension Bench {
    /// Cold boot against snapshot restore, per image and memory size, in one run.
    func runSnapshots() async throws {
        var rows: [[String]] = []
        let sizes = memory.split(separator: ",").compactMap { Int($0) }
        for image in images.split(separator: ",").map(String.init) {
            for size in sizes {
                var settings = QEMUSettings(image: image)
                settings.memoryMiB = size
                let machine = MachineSpec(name: "bench", qemu: settings)
                let spec = TestSpec(name: "bench-snap-\(image)", globalTimeout: 1800, machines: [machine])
                let driver = benchDriver(spec)
                let restores = self.restores
                let result = SnapshotResults()
                writeStderr("bench: \(image) (\(size) MiB): cold boot…\n")
                let outcome = await ScriptRunner.runHandlingSignals(driver) { driver in
                    let m = try driver.machine("bench")
                    let began = ContinuousClock.now
                    try await m.succeed("true")
                    result.cold = (ContinuousClock.now - began).seconds
                    if let unit = m.readyUnit {
                        try await m.waitForUnit(unit)
                        result.hasReadyUnit = true
                    }
                    result.ready = (ContinuousClock.now - began).seconds
                    let saving = ContinuousClock.now
                    try await m.snapshot("bench")
                    result.save = (ContinuousClock.now - saving).seconds
                    writeStderr("bench: \(image) (\(size) MiB): \(restores) restores…\n")
                    for _ in 0..<restores {
                        try await m.succeed("touch /tmp/dirty")
                        let t = ContinuousClock.now
                        try await m.restore("bench")
                        try await m.succeed("true")
                        result.restore.append((ContinuousClock.now - t).seconds)
                        try await m.fail("test -e /tmp/dirty")
                    }
                }
                try? FileManager.default.removeItem(at: driver.options.outputDirectory)
                guard outcome == .passed else {
                    writeStderr("bench: \(image) failed: \(outcome)\n")
                    throw ExitCode(1)
                }
                let median = percentile(result.restore, 0.5)
                rows.append([
                    image, "\(size) MiB", String(format: "%.2f s", result.cold),
                    result.hasReadyUnit ? String(format: "%.2f s", result.ready) : "-",
                    ms(result.save), ms(median), ms(result.restore.max() ?? .nan),
                    String(format: "%.0fx", result.cold / median),
                ])
            }
        }
        let header = ["guest", "memory", "cold boot→1st cmd", "cold boot→ready unit", "snapshot", "restore→1st cmd p50", "restore max", "speed-up"]
        print(table([header] + rows))
        print("accelerator: \(Accelerator.lastResolved?.rawValue.uppercased() ?? "unknown"); \(restores) restores per guest; restore includes the clock reset and 9p remount")
    }

    final class SnapshotResults: @unchecked Sendable {
        var cold = 0.0
        var ready = 0.0
        var save = 0.0
        var hasReadyUnit = false
        var restore: [Double] = []
    }
}
