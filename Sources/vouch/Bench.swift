import ArgumentParser
import Foundation
import Glibc
@_spi(Benchmark) import Vouch

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure boot time, command round trips and driver memory on the default guests.",
        discussion: """
            For each image, boots one machine and reports: boot to first command, and the round \
            trip of execute("true") with Vouch's framing (which waits for processes a command \
            leaves holding its stdout), with the plain framing it had before that detection \
            existed, and with the nixpkgs Python driver's two-step framing (timeout + bash -c + \
            base64, then a second round trip for the status), all on the same guest in the same \
            run, interleaved; and the driver's peak resident memory. Other modes measure the \
            network, scripts, backends, snapshots, a console flood and screens (screenshots, OCR). The machine is shared \
            and noisy: compare figures within one run.
            """)

    @Option(help: "Images to measure, comma-separated.")
    var images = "minimal,systemd"

    @Option(help: "Round trips per framing.")
    var calls = 200

    @Option(name: .long, help: "Accelerator: auto, kvm or tcg.")
    var accel: String?

    @Flag(help: "Measure startAll of 1, 2 and 4 minimal machines and the ping round trip between two, instead.")
    var network = false

    @Flag(help: "Measure Swift script compile time and the Python bridge's per-call cost, instead.")
    var scripts = false

    @Option(help: "Compare backends instead (comma-separated: qemu,nspawn,ssh,firecracker,cloud-hypervisor): boot to first command, round trips and snapshot restores; the microVMs run $VOUCH_FIRECRACKER / $VOUCH_CLOUD_HYPERVISOR (e.g. the emulators in Tests/Emulators), marked EMULATED when they are.")
    var backends: String?

    @Flag(help: "Measure cold boot against snapshot restore (restore → first command) instead.")
    var snapshots = false

    @Option(help: "With --snapshots: guest memory sizes in MiB, comma-separated (restore should not depend on it).")
    var memory = "512"

    @Option(help: "With --snapshots: restores per guest.")
    var restores = 5

    @Option(help: "Flood a minimal guest's serial console with this many MB instead, and report the driver's memory and CPU.")
    var consoleFlood: Int?

    @Option(help: "Measure screenshots and OCR (one pass; the variants at once and one after another) on a guest with a display instead, this many rounds.")
    var screens: Int?

    func run() async throws {
        if let consoleFlood { return try await runConsoleFlood(megabytes: consoleFlood) }
        if let screens { return try await runScreens(rounds: screens) }
        if network { return try await runNetwork() }
        if scripts { return try await runScripts() }
        if let backends { return try await runBackends(backends) }
        if snapshots { return try await runSnapshots() }
        var rows: [[String]] = []
        var accelerator = "unknown"
        for image in images.split(separator: ",").map(String.init) {
            let machine = MachineSpec(name: "bench", qemu: QEMUSettings(image: image))
            let spec = TestSpec(name: "bench-\(image)", globalTimeout: 1800, machines: [machine])
            let driver = benchDriver(spec)
            let calls = self.calls
            let result = Results()
            writeStderr("bench: \(image): booting…\n")
            let outcome = await ScriptRunner.runHandlingSignals(driver) { driver in
                let m = try driver.machine("bench")
                let began = ContinuousClock.now
                try await m.succeed("true")
                result.boot = (ContinuousClock.now - began).seconds
                writeStderr("bench: \(image): up in \(String(format: "%.2f", result.boot)) s; \(calls) round trips per framing…\n")
                for _ in 0..<10 { try await m.succeed("true") }
                // Vouch's and the plain framing alternate call by call (ABBA, so neither always
                // goes first), so that a load change on the host hits both alike; the two-step
                // framing, ten times slower and spawning processes, runs in its own rounds between.
                for round in 0..<(calls / 10) {
                    for i in 0..<10 {
                        let vouchFirst = (round * 10 + i) % 2 == 0
                        for framing in vouchFirst ? [0, 1] : [1, 0] {
                            if framing == 0 {
                                result.vouch += try await timed(1) { try await m.execute("true") }
                            } else {
                                result.plain += try await timed(1) { try await m.executePlain("true") }
                            }
                        }
                    }
                    result.twoStep += try await timed(10) {
                        let r = try await m.executeTwoStep("true")
                        guard r.status == 0 else { throw VouchError(.commandFailed, "two-step true returned \(r.status)") }
                    }
                }
                try await m.shutdown()
            }
            accelerator = Accelerator.lastResolved?.rawValue.uppercased() ?? "unknown"
            try? FileManager.default.removeItem(at: driver.options.outputDirectory)
            guard outcome == .passed else {
                writeStderr("bench: \(image) failed: \(outcome)\n")
                throw ExitCode(1)
            }
            rows.append([
                image, String(format: "%.2f s", result.boot),
                ms(percentile(result.vouch, 0.5)), ms(percentile(result.vouch, 0.99)),
                ms(percentile(result.plain, 0.5)), ms(percentile(result.plain, 0.99)),
                String(format: "%+.0f%%", (percentile(result.vouch, 0.5) / percentile(result.plain, 0.5) - 1) * 100),
                ms(percentile(result.twoStep, 0.5)), ms(percentile(result.twoStep, 0.99)),
                String(format: "%.1fx", percentile(result.twoStep, 0.5) / percentile(result.vouch, 0.5)),
            ])
        }
        let header = ["guest", "boot→1st cmd", "vouch p50", "vouch p99", "plain p50", "plain p99", "vouch vs plain p50",
                      "2-step p50", "2-step p99", "speed-up p50"]
        print(table([header] + rows))
        print("accelerator: \(accelerator); \(calls) calls per framing; plain = without waiting for leftovers; driver peak RSS: \(peakRSS()) (VmHWM)")
    }

    /// startAll for 1, 2 and 4 minimal machines on VLAN 1, and ping between two.
    func runNetwork() async throws {
        var rows: [[String]] = []
        for count in [1, 2, 4] {
            let machines = (1...count).map { i -> MachineSpec in
                var q = QEMUSettings(image: "minimal")
                q.memoryMiB = 256
                return MachineSpec(name: "m\(i)", qemu: q)
            }
            let driver = benchDriver(TestSpec(name: "bench-net", machines: machines))
            let result = Results()
            writeStderr("bench: startAll of \(count) minimal machine(s)…\n")
            let outcome = await ScriptRunner.runHandlingSignals(driver) { d in
                let began = ContinuousClock.now
                try await d.startAll()
                result.boot = (ContinuousClock.now - began).seconds
                if count == 2 {
                    let out = try await d.machine("m1").succeed("ping -c 20 -i 0.2 -q m2 | tail -1")
                    // "round-trip min/avg/max = 1.2/3.4/5.6 ms"
                    let numbers = out.split(separator: "=").last?.split(separator: "/").compactMap { Double($0.trimmingCharacters(in: .whitespaces).split(separator: " ").first ?? "") } ?? []
                    if numbers.count >= 2 { result.vouch = [numbers[1] / 1000] }
                }
            }
            try? FileManager.default.removeItem(at: driver.options.outputDirectory)
            guard outcome == .passed else {
                writeStderr("bench: startAll of \(count) failed: \(outcome)\n")
                throw ExitCode(1)
            }
            rows.append(["\(count)", String(format: "%.2f s", result.boot), result.vouch.first.map(ms) ?? "-"])
        }
        print(table([["machines", "startAll", "ping avg (m1→m2, 20 pings)"]] + rows))
    }

    /// A quiet driver for one measurement, writing into `outputDirectory`
    /// (a per-process temporary directory by default); exits on a bad spec.
    func benchDriver(_ spec: TestSpec, outputDirectory: URL? = nil) -> Driver {
        let out = outputDirectory ?? URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vouch-bench-\(getpid())")
        var options = RunOptions(outputDirectory: out)
        options.quiet = true
        if let accel { options.accelerator = Accelerator.Choice(rawValue: accel) }
        do { return try Driver(spec: spec, options: options) } catch { fail(error) }
    }

    final class Results: @unchecked Sendable {
        var boot = 0.0
        var vouch: [Double] = []
        var plain: [Double] = []
        var twoStep: [Double] = []
        /// Snapshot restores (empty where the backend has no snapshots).
        var restores: [Double] = []
    }
}

/// Runs `body` `count` times and returns how long each call took, in seconds.
func timed(_ count: Int, _ body: () async throws -> Void) async throws -> [Double] {
    var samples: [Double] = []
    samples.reserveCapacity(count)
    for _ in 0..<count {
        let began = ContinuousClock.now
        try await body()
        samples.append((ContinuousClock.now - began).seconds)
    }
    return samples
}

func percentile(_ values: [Double], _ p: Double) -> Double {
    guard !values.isEmpty else { return .nan }
    let sorted = values.sorted()
    let index = min(sorted.count - 1, Int((Double(sorted.count) * p).rounded(.up)) - 1)
    return sorted[max(0, index)]
}

func ms(_ seconds: Double) -> String { String(format: "%.2f ms", seconds * 1000) }

func peakRSS() -> String { memoryField("VmHWM").map { "\($0) kB" } ?? "unknown" }

/// A `kB` field of /proc/self/status (VmRSS, VmHWM).
func memoryField(_ name: String) -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix(name + ":") }) else { return nil }
    return Int(line.split(separator: ":")[1].trimmingCharacters(in: .whitespaces).split(separator: " ")[0])
}

/// CPU seconds this process has used (user + system).
func cpuSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}

func table(_ rows: [[String]]) -> String {
    let widths = rows[0].indices.map { i in rows.map { $0[i].count }.max()! }
    func line(_ row: [String]) -> String {
        "| " + row.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: " | ") + " |"
    }
    let rule = "|" + widths.map { String(repeating: "-", count: $0 + 2) }.joined(separator: "|") + "|"
    return ([line(rows[0]), rule] + rows.dropFirst().map(line)).joined(separator: "\n")
}
