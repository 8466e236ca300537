import ArgumentParser
import Foundation
import Vouch

extension Bench {
    /// Swift script compile time (cold and cached), and the cost of a call
    /// from a Python script through the bridge against the same call from Swift.
    func runScripts() async throws {
        let work = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vouch-bench-scripts-\(getpid())")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: work) }

        // A fresh cache directory makes the first compile a cold one.
        let script = work.appendingPathComponent("bench.swift")
        try "// \(UUID())\ntry await machine.succeed(\"true\")\n".write(to: script, atomically: true, encoding: .utf8)
        let compiler = ScriptCompiler(cacheDirectory: work.appendingPathComponent("cache"))
        var began = ContinuousClock.now
        _ = try await compiler.compile(script: script, machines: ["machine"])
        let cold = (ContinuousClock.now - began).seconds
        began = ContinuousClock.now
        let (_, cached) = try await compiler.compile(script: script, machines: ["machine"])
        let warm = (ContinuousClock.now - began).seconds
        guard cached else { throw ValidationError("the second compile did not come from the cache") }

        let machine = MachineSpec(name: "machine", qemu: QEMUSettings(image: "minimal"))
        let driver = benchDriver(TestSpec(name: "bench-scripts", machines: [machine]), outputDirectory: work.appendingPathComponent("out"))
        let samples = work.appendingPathComponent("python.json")
        let python = work.appendingPathComponent("bench.py")
        try """
            import json, time
            for _ in range(10):
                machine.succeed("true")
            calls, local = [], []
            for _ in range(\(calls)):
                t0 = time.perf_counter(); machine.succeed("true"); calls.append(time.perf_counter() - t0)
            for _ in range(\(calls)):
                t0 = time.perf_counter(); machine.is_up(); local.append(time.perf_counter() - t0)
            with open("\(samples.path)", "w") as f:
                json.dump({"succeed": calls, "is_up": local}, f)
            """.write(to: python, atomically: true, encoding: .utf8)
        let result = Results()
        let calls = self.calls
        writeStderr("bench: booting a minimal machine; \(calls) calls from Swift and from Python…\n")
        let outcome = await ScriptRunner.runHandlingSignals(driver) { d in
            let m = try d.machine("machine")
            for _ in 0..<10 { try await m.succeed("true") }
            result.vouch = try await timed(calls) { try await m.succeed("true") }
            result.twoStep = try await timed(calls) { _ = await m.isUp() }
            try await PythonScript(path: python).run(in: d)
        }
        guard outcome == .passed else {
            writeStderr("bench: failed: \(outcome)\n")
            throw ExitCode(1)
        }
        let json = try JSONValue.parse(Array(try Data(contentsOf: samples)))
        let py = (json["succeed"]?.arrayValue ?? []).compactMap { if case .number(let n) = $0 { n } else { nil } }
        let pyLocal = (json["is_up"]?.arrayValue ?? []).compactMap { if case .number(let n) = $0 { n } else { nil } }
        print(table([
            ["Swift script", "cold compile", "cached"],
            ["minimal test script", String(format: "%.2f s", cold), ms(warm)],
        ]))
        print()
        print(table([
            ["call (minimal guest)", "Swift p50", "Swift p99", "Python p50", "Python p99", "bridge cost p50"],
            ["succeed(\"true\")", ms(percentile(result.vouch, 0.5)), ms(percentile(result.vouch, 0.99)),
             ms(percentile(py, 0.5)), ms(percentile(py, 0.99)), ms(percentile(py, 0.5) - percentile(result.vouch, 0.5))],
            ["is_up() (no guest round trip)", ms(percentile(result.twoStep, 0.5)), ms(percentile(result.twoStep, 0.99)),
             ms(percentile(pyLocal, 0.5)), ms(percentile(pyLocal, 0.99)), ms(percentile(pyLocal, 0.5) - percentile(result.twoStep, 0.5))],
        ]))
        print("accelerator: \(Accelerator.lastResolved?.rawValue.uppercased() ?? "unknown"); \(calls) calls each")
    }
}
