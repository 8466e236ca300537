import Foundation
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// Builds machine specs for the built-in images.
func guest(_ name: String, image: String = "minimal", bootTimeout: Double = 300, cmdline: String? = nil) -> MachineSpec {
    var settings = QEMUSettings(image: image)
    settings.cmdline = cmdline
    var m = MachineSpec(name: name, qemu: settings)
    m.bootTimeout = bootTimeout
    return m
}

/// A test run on real QEMU guests, checked for leftovers afterwards.
struct RealRun {
    let driver: Driver
    let outcome: RunOutcome

    /// Runs `body` with a driver for `machines`, then asserts that teardown
    /// left no process referring to the run directory and removed it.
    static func run(
        _ machines: [MachineSpec], globalTimeout: Double = 1200, network: NetworkKind = .vde,
        name: String = #function, _ body: @escaping @Sendable (Driver) async throws -> Void
    ) async throws -> RealRun {
        var options = RunOptions(outputDirectory: outputDirectory(name))
        options.quiet = ProcessInfo.processInfo.environment["VOUCH_TEST_LOG"] == nil
        options.globalTimeout = globalTimeout
        var spec = TestSpec(name: name, machines: machines)
        spec.network = network
        let driver = try Driver(spec: spec, options: options)
        let containers = machines.contains { $0.backend == "nspawn" }
        let containersBefore = containers ? containerInits() : []
        let propagationBefore = nspawnPropagationDirectories()
        let outcome = await driver.run(body)
        let run = RealRun(driver: driver, outcome: outcome)
        run.expectNoLeftovers()
        // Container inits do not mention the run directory: compare instead.
        let leftContainers = containers ? containerInits().subtracting(containersBefore) : []
        #expect(leftContainers.isEmpty, "container inits left behind: \(leftContainers.sorted().map { pid in "\(pid) " + ((try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? "").split(separator: "\n").prefix(7).joined(separator: " ") })")
        let propagationLeft = nspawnPropagationDirectories().subtracting(propagationBefore)
        #expect(propagationLeft.isEmpty, "nspawn left /run/systemd/nspawn/propagate/\(propagationLeft.sorted())")
        let remoteDirs = ((try? FileManager.default.contentsOfDirectory(atPath: "/tmp")) ?? []).filter { $0.hasPrefix("vouch-ssh-") }
        #expect(remoteDirs.isEmpty || !machines.contains { $0.backend == "ssh" }, "ssh machines left /tmp/\(remoteDirs)")
        // Keep the log of a failed run for the developer; drop a passed one's.
        if outcome == .passed { try? FileManager.default.removeItem(at: options.outputDirectory) }
        return run
    }

    static func outputDirectory(_ name: String) -> URL {
        let safe = name.filter { $0.isLetter || $0.isNumber }
        return URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vouch-it-\(safe)-\(getpid())")
    }

    func expectNoLeftovers(sourceLocation: Testing.SourceLocation = #_sourceLocation) {
        #expect(!FileManager.default.fileExists(atPath: driver.runDirectory),
                "run directory \(driver.runDirectory) was not removed", sourceLocation: sourceLocation)
        let holders = processes(mentioning: driver.runDirectory)
        #expect(holders.isEmpty, "processes left behind: \(holders)", sourceLocation: sourceLocation)
    }
}

/// The `vouch-*` directories nspawn keeps per container in /run.
func nspawnPropagationDirectories() -> Set<String> {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: NspawnHost.propagationRoot)) ?? []
    return Set(names.filter { $0.hasPrefix("vouch-") })
}

/// Pids of live processes that are PID 1 of a child PID namespace (a
/// container's init), to check that no container outlives its run. Zombies
/// do not count: this host's PID 1 reaps reparented ones only lazily.
func containerInits() -> Set<Int32> {
    let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return Set(pids.compactMap { pid -> Int32? in
        guard pid.allSatisfy(\.isNumber),
              let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              !status.contains("State:\tZ"),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("NSpid:") })
        else { return nil }
        let ids = line.split(whereSeparator: { $0 == "\t" || $0 == " " }).dropFirst()
        return ids.count >= 2 && ids.last == "1" ? Int32(pid) : nil
    })
}

/// Command lines of live processes that contain `text`.
func processes(mentioning text: String) -> [String] {
    let fm = FileManager.default
    guard let pids = try? fm.contentsOfDirectory(atPath: "/proc") else { return [] }
    var found: [String] = []
    for pid in pids where pid.allSatisfy(\.isNumber) {
        guard let data = fm.contents(atPath: "/proc/\(pid)/cmdline"), !data.isEmpty else { continue }
        let cmdline = String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
        if cmdline.contains(text) { found.append("\(pid): \(cmdline.prefix(160))") }
    }
    return found
}

/// The package root, from this file's path.
let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// The built CLI.
let vouchBinary = packageRoot.appendingPathComponent(".build/debug/vouch").path

/// Runs the CLI and returns its exit status and combined output.
func runCLI(_ args: [String], environment: [String: String]? = nil, timeout: Double = 600) async throws -> (status: Int32, output: String) {
    let (status, output) = try await ChildProcess.run(vouchBinary, args, environment: environment, timeout: timeout)
    guard case .exited(let code) = status else { return (-1, output) }
    return (code, output)
}

/// A suite with a private directory for its files (specs, scripts,
/// output), removed with each test's suite instance.
class ScratchSuite {
    let dir: URL

    init(prefix: String) throws {
        dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    deinit {
        try? FileManager.default.removeItem(at: dir)
    }

    /// Writes `text` to `name` in the directory and returns its path.
    func write(_ name: String, _ text: String) throws -> String {
        let url = dir.appendingPathComponent(name)
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }
}
