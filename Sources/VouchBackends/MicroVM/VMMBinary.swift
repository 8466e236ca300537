import Foundation
import Glibc
import VouchSupport

/// A microVM monitor's executable (firecracker, cloud-hypervisor): where it
/// is, what it says it is, and whether this host can run it. Checked before
/// anything boots, so a host that cannot run it is refused at once.
package struct VMMBinary: Sendable {
    /// The path that is run.
    package let path: String
    /// The first line of its `--version` output (in snapshot keys and logs).
    package var version: String {
        versionOutput.split(separator: "\n").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
    }
    /// All of its `--version` output.
    package let versionOutput: String

    /// Whether it needs KVM. Every real VMM does; a binary whose version
    /// output says it is an emulator (Vouch's test doubles run guests under
    /// QEMU TCG) does not.
    package var needsKVM: Bool { !versionOutput.lowercased().contains("emulator") }

    /// Finds the VMM: `configured` (the spec's `binary`), else `$environment`,
    /// else `program` on PATH, and asks it for its version.
    /// - Throws: `.unsupported` naming what is missing: no such binary, one
    ///   that does not answer `--version` like `expectedName`, or no usable KVM.
    package static func locate(
        program: String, expectedName: String, configured: String?, environment: String, probeKernel: String, machine: String
    ) throws(VouchError) -> VMMBinary {
        let given = configured ?? ProcessInfo.processInfo.environment[environment].flatMap { $0.isEmpty ? nil : $0 }
        let wanted = given ?? program
        guard let path = ChildProcess.resolve(wanted) else {
            let how = given == nil
                ? "\(program) is not on PATH (Debian ships no package of it; install a release binary, or set \(environment) or the machine's \"binary\")"
                : "\(wanted) does not exist or is not executable"
            throw VouchError(.unsupported, "the \(program) backend cannot run here: \(how)", machine: machine)
        }
        let binary = VMMBinary(path: path, versionOutput: try versionOutput(path, machine: machine))
        guard binary.version.lowercased().hasPrefix(expectedName.lowercased()) else {
            throw VouchError(.unsupported, "\(path) --version says \(String(reflecting: binary.version)), not \(expectedName) …", machine: machine)
        }
        if binary.needsKVM, let why = KVMCheck.unusable(probeKernel: probeKernel) {
            throw VouchError(.unsupported, "the \(program) backend needs KVM and this host has none usable: \(why)", machine: machine)
        }
        return binary
    }

    /// Runs `path --version` (at most 5 s) and returns what it printed.
    private static func versionOutput(_ path: String, machine: String) throws(VouchError) -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = ["--version"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        do { try process.run() } catch {
            throw VouchError(.unsupported, "cannot run \(path) --version", machine: machine, cause: SendableError(error))
        }
        let deadline = Deadline(seconds: 5)
        while process.isRunning, !deadline.hasPassed { usleep(10_000) }
        if process.isRunning {
            process.terminate()
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            throw VouchError(.unsupported, "\(path) --version did not answer within 5 s", machine: machine)
        }
        return String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    }
}

/// Whether KVM can run guests here: the device's permissions, then the
/// probe the QEMU backend uses (`Accelerator`: a kernel booted under KVM,
/// once per host boot), as a device that opens is not enough.
enum KVMCheck {
    /// Why KVM is unusable, or nil when it works.
    static func unusable(probeKernel: String) -> String? {
        guard access("/dev/kvm", R_OK | W_OK) == 0 else {
            return FileManager.default.fileExists(atPath: "/dev/kvm")
                ? "/dev/kvm is not readable and writable by this user" : "there is no /dev/kvm"
        }
        let (works, detail) = Accelerator.kvmWorksBlocking(probeKernel: probeKernel)
        return works ? nil : "KVM did not boot a kernel (\(detail))"
    }
}
