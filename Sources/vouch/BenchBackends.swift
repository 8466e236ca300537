import ArgumentParser
import Foundation
import Glibc
@_spi(Benchmark) import Vouch

extension Bench {
    /// Boot to first command and command round trips per backend, on the
    /// systemd image. Each backend says how to set itself up for this
    /// (`BackendProvider.benchmarkPlan`): the ssh one drives the sshd of an
    /// nspawn container through a forwarded port, needing no outside host.
    func runBackends(_ list: String) async throws {
        var rows: [[String]] = []
        for backend in list.split(separator: ",").map(String.init) {
            let (result, runsOn) = try await measure(backend)
            rows.append([backend, runsOn, String(format: "%.2f s", result.boot),
                         ms(percentile(result.vouch, 0.5)), ms(percentile(result.vouch, 0.99)),
                         result.restores.isEmpty ? "-" : ms(percentile(result.restores, 0.5))])
        }
        print(table([["backend", "runs on", "boot→1st cmd", "round trip p50", "round trip p99", "restore p50"]] + rows))
        print("systemd image; \(calls) round trips of execute(\"true\") each; accelerator (qemu): "
              + (Accelerator.lastResolved?.rawValue.uppercased() ?? "-"))
    }

    private func measure(_ backend: String) async throws -> (Results, String) {
        let out = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vouch-bench-\(getpid())")
        defer { try? FileManager.default.removeItem(at: out) }
        let plan: BenchmarkPlan
        do throws(VouchError) {
            try vouching("cannot create \(out.path)") { try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true) }
            plan = try BackendRegistry.provider(named: backend).benchmarkPlan(image: "systemd", workDirectory: out.path)
        } catch {
            fail(error)
        }
        let driver = benchDriver(TestSpec(name: "bench-\(backend)", globalTimeout: 1800, machines: plan.machines), outputDirectory: out)
        let result = Results()
        let calls = self.calls
        writeStderr("bench: \(backend): booting…\n")
        let outcome = await ScriptRunner.runHandlingSignals(driver) { d in
            for step in plan.steps {
                switch step {
                case .succeed(let machine, let command): try await d.machine(machine).succeed(command)
                case .waitForUnit(let machine, let unit): try await d.machine(machine).waitForUnit(unit)
                case .forwardPort(let machine, let host, let guest): try await d.machine(machine).forwardPort(host: host, guest: guest)
                }
            }
            let m = try d.machine(plan.measured)
            let began = ContinuousClock.now
            try await m.succeed("true")
            result.boot = (ContinuousClock.now - began).seconds
            for _ in 0..<10 { try await m.succeed("true") }
            result.vouch = try await timed(calls) { try await m.execute("true") }
            do {
                try await m.snapshot("bench")
                result.restores = try await timed(3) { try await m.restore("bench") }
            } catch let error as VouchError where error.kind == .unsupported {}
        }
        guard outcome == .passed else {
            writeStderr("bench: \(backend) failed: \(outcome)\n")
            throw ExitCode(1)
        }
        return (result, plan.runsOn)
    }
}
