import Foundation
import Glibc
import Synchronization
import VouchSupport

/// Chooses between KVM and TCG, with a real probe of KVM.
///
/// `/dev/kvm` existing is not enough: nested setups can open it and still
/// fail to run a stock kernel. The probe boots the given kernel without a
/// root file system under KVM and expects it to get as far as its panic
/// message. The result is cached per host boot.
public enum Accelerator {
    /// What a test asks for.
    public enum Choice: String, Sendable, CaseIterable {
        case auto, kvm, tcg
    }

    /// What QEMU gets.
    public enum Kind: String, Sendable, CaseIterable {
        case kvm, tcg
    }

    /// Resolves `choice` (overridden by `$VOUCH_ACCEL`) to an accelerator and
    /// the reason it was chosen.
    package static func resolve(_ choice: Choice, probeKernel: String?, qemu: String) async -> (Kind, String) {
        let (kind, reason) = await decide(choice, probeKernel: probeKernel, qemu: qemu)
        last.withLock { $0 = kind }
        return (kind, reason)
    }

    private static func decide(_ choice: Choice, probeKernel: String?, qemu: String) async -> (Kind, String) {
        var choice = choice
        if let env = ProcessInfo.processInfo.environment["VOUCH_ACCEL"], let c = Choice(rawValue: env) {
            choice = c
        }
        switch choice {
        case .tcg: return (.tcg, "TCG requested")
        case .kvm: return (.kvm, "KVM requested")
        case .auto: break
        }
        guard access("/dev/kvm", R_OK | W_OK) == 0 else {
            return (.tcg, "no usable /dev/kvm; using TCG (software emulation, slower)")
        }
        let cache = cacheFile()
        if let cached = try? String(contentsOf: cache, encoding: .utf8) {
            let parts = cached.split(separator: " ", maxSplits: 2).map(String.init)
            if parts.count == 3, parts[0] == bootID() {
                return parts[1] == "kvm" ? (.kvm, "KVM works (cached probe)") : (.tcg, "KVM unusable (cached probe: \(parts[2])); using TCG")
            }
        }
        guard let probeKernel else {
            return (.tcg, "KVM not probed (no kernel to probe with); using TCG")
        }
        let (works, detail) = await probe(kernel: probeKernel, qemu: qemu)
        try? FileManager.default.createDirectory(at: cache.deletingLastPathComponent(), withIntermediateDirectories: true)
        try? "\(bootID()) \(works ? "kvm" : "tcg") \(detail)".write(to: cache, atomically: true, encoding: .utf8)
        return works ? (.kvm, "KVM works (probed: \(detail))") : (.tcg, "KVM unusable (\(detail)); using TCG")
    }

    private static let announced = Mutex(false)
    private static let last = Mutex<Kind?>(nil)

    /// The accelerator the most recent machine in this process got, if any.
    public static var lastResolved: Kind? { last.withLock { $0 } }

    /// True the first time it is called in a process: the choice is logged once per run.
    package static func firstAnnouncement() -> Bool {
        announced.withLock { done in
            defer { done = true }
            return !done
        }
    }

    package static func probe(kernel: String, qemu: String) async -> (Bool, String) {
        guard let process = try? ChildProcess(qemu, probeArguments(kernel: kernel)) else { return (false, "cannot start \(qemu)") }
        let output = OutputCollector()
        let readers = Task {
            async let out: Void = output.drain(process.stdout!.queue)
            async let err: Void = output.drain(process.stderr!.queue)
            _ = await (out, err)
        }
        let finished = try? await process.waitForExit(until: Deadline(seconds: 15))
        await process.terminate(grace: 0.5)
        _ = try? await withDeadline(seconds: 2) { await readers.value }
        let text = output.text
        if text.contains("Kernel panic") || text.contains("VFS:") {
            return (true, "a kernel booted to its first panic")
        }
        var last = text.split(separator: "\n").last.map(String.init) ?? "no output"
        // QEMU's assertion messages carry long source paths; the end says what failed.
        if last.count > 90 { last = "…" + last.suffix(90) }
        return (false, finished == nil ? "probe VM hung for 15 s" : "probe VM failed: \(last)")
    }

    /// Whether KVM runs a kernel here, for callers that cannot wait
    /// asynchronously (checks before anything starts): the cached probe
    /// result, else a probe run now (blocking, at most 15 s) and cached.
    package static func kvmWorksBlocking(probeKernel: String, qemu: String = "qemu-system-x86_64") -> (Bool, String) {
        if let cached = try? String(contentsOf: cacheFile(), encoding: .utf8) {
            let parts = cached.split(separator: " ", maxSplits: 2).map(String.init)
            if parts.count == 3, parts[0] == bootID() { return (parts[1] == "kvm", parts[2]) }
        }
        guard let qemuPath = ChildProcess.resolve(qemu) else { return (false, "\(qemu) is not installed to probe KVM with") }
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("vouch-kvm-probe-\(getpid()).log")
        defer { try? FileManager.default.removeItem(at: log) }
        guard FileManager.default.createFile(atPath: log.path, contents: nil), let sink = try? FileHandle(forWritingTo: log) else {
            return (false, "cannot write \(log.path)")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: qemuPath)
        process.arguments = probeArguments(kernel: probeKernel)
        process.standardOutput = sink
        process.standardError = sink
        process.standardInput = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return (false, "cannot start \(qemuPath)") }
        let deadline = Deadline(seconds: 15)
        while process.isRunning, !deadline.hasPassed { usleep(20_000) }
        let hung = process.isRunning
        if hung { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        try? sink.close()
        let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
        let works = text.contains("Kernel panic") || text.contains("VFS:")
        var detail = works ? "a kernel booted to its first panic" : (text.split(separator: "\n").last.map(String.init) ?? "no output")
        if !works, detail.count > 90 { detail = "…" + detail.suffix(90) }
        if !works, hung { detail = "probe VM hung for 15 s" }
        try? FileManager.default.createDirectory(at: cacheFile().deletingLastPathComponent(), withIntermediateDirectories: true)
        try? "\(bootID()) \(works ? "kvm" : "tcg") \(detail)".write(to: cacheFile(), atomically: true, encoding: .utf8)
        return (works, detail)
    }

    private static func probeArguments(kernel: String) -> [String] {
        [
            "-accel", "kvm", "-M", "microvm", "-cpu", "host", "-m", "128", "-nodefaults", "-no-user-config",
            "-display", "none", "-serial", "stdio", "-no-reboot", "-kernel", kernel,
            "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent",
        ]
    }

    private static func cacheFile() -> URL {
        let base = ProcessInfo.processInfo.environment["XDG_CACHE_HOME"].map { URL(fileURLWithPath: $0) }
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache")
        return base.appendingPathComponent("vouch/kvm-probe")
    }

    private static func bootID() -> String {
        (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? "unknown"
    }
}

