import Foundation
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchSupport

/// Which firecracker and cloud-hypervisor binaries the tests run: Vouch's
/// emulators (Tests/Emulators, guests under QEMU TCG) always; the real
/// binaries where `VOUCH_REAL_FIRECRACKER` / `VOUCH_REAL_CLOUD_HYPERVISOR`
/// name them, or they are on PATH and KVM works.
enum MicroVMBinaries {
    static let emulatorDirectory: String = {
        // Tests/IntegrationTests/MicroVMFixture.swift → Tests/Emulators
        let here = URL(fileURLWithPath: #filePath)
        return here.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Emulators").path
    }()

    static var fakeFirecracker: String { emulatorDirectory + "/fake-firecracker" }
    static var fakeCloudHypervisor: String { emulatorDirectory + "/fake-cloud-hypervisor" }

    /// The real firecracker, if this host can run one.
    static var realFirecracker: String? { real(env: "VOUCH_REAL_FIRECRACKER", program: "firecracker") }
    /// The real cloud-hypervisor, if this host can run one.
    static var realCloudHypervisor: String? { real(env: "VOUCH_REAL_CLOUD_HYPERVISOR", program: "cloud-hypervisor") }

    private static func real(env: String, program: String) -> String? {
        if let given = ProcessInfo.processInfo.environment[env], !given.isEmpty { return given }
        guard let onPath = ChildProcess.resolve(program) else { return nil }
        let kernel = (try? GuestImage.resolve("minimal"))?.kernel.path ?? ""
        return KVMCheck.unusable(probeKernel: kernel) == nil ? onPath : nil
    }

    /// QEMU processes an emulator started (their command lines name its
    /// private `fake-vmm-` directory) that outlived it, to prove none is
    /// left. An emulator still running is caught by `RealRun` (its command
    /// line names the run directory); QEMUs of other emulators on this host
    /// still have theirs as parent.
    static func emulatedGuests() -> Set<Int32> {
        var found: Set<Int32> = []
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), let raw = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            let line = String(decoding: raw, as: UTF8.self)
            guard line.hasPrefix("qemu-system"), line.contains("fake-vmm-") else { continue }
            let status = (try? String(contentsOfFile: "/proc/\(entry)/status", encoding: .utf8)) ?? ""
            let parent = status.split(separator: "\n").first { $0.hasPrefix("PPid:") }.map { $0.dropFirst(5).trimmingCharacters(in: .whitespaces) } ?? "1"
            let parentLine = FileManager.default.contents(atPath: "/proc/\(parent)/cmdline").map { String(decoding: $0, as: UTF8.self) } ?? ""
            if !parentLine.contains("fake-firecracker"), !parentLine.contains("fake-cloud-hypervisor") { found.insert(pid) }
        }
        return found
    }
}

/// A firecracker machine on a built-in image, run by `binary` (default: the emulator).
func microVM(_ name: String, image: String = "minimal", vlans: [Int] = [], binary: String = MicroVMBinaries.fakeFirecracker,
             bootTimeout: Double = 180) -> MachineSpec {
    var settings = FirecrackerSettings(image: image)
    settings.binary = binary
    var m = MachineSpec(name: name, firecracker: settings)
    m.vlans = vlans
    m.bootTimeout = bootTimeout
    return m
}

/// A cloud-hypervisor machine on a built-in image, run by `binary` (default: the emulator).
func cloudHypervisorVM(_ name: String, image: String = "minimal", vlans: [Int] = [], binary: String = MicroVMBinaries.fakeCloudHypervisor,
                       bootTimeout: Double = 180) -> MachineSpec {
    var settings = CloudHypervisorSettings(image: image)
    settings.binary = binary
    var m = MachineSpec(name: name, cloudHypervisor: settings)
    m.vlans = vlans
    m.bootTimeout = bootTimeout
    return m
}

/// Runs `body` with `FAKE_FIRECRACKER_FAULTS` set to `faults` (the
/// integration tests run one at a time, so the environment is theirs).
func withEmulatorFaults<T>(_ faults: String, _ body: () async throws -> T) async rethrows -> T {
    setenv("FAKE_FIRECRACKER_FAULTS", faults, 1)
    defer { unsetenv("FAKE_FIRECRACKER_FAULTS") }
    return try await body()
}
