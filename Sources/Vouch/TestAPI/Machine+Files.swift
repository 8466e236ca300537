import Foundation
import VouchBackends
import VouchGuest
import VouchSupport

extension Machine {
    /// The backdoor shell of a started machine.
    /// - Throws: `.machineDown` when there is none (the machine went down).
    func connectedShell() throws(VouchError) -> GuestShell {
        guard let shell else { throw VouchError(.machineDown, "the machine is not running", machine: name) }
        return shell
    }

    /// Copies a file or directory from the host into the guest at `destination`,
    /// through the shared directory (any size, binary-safe).
    /// - Throws: `.commandFailed` if the guest-side copy fails, `.other` with
    ///   the cause if the host file cannot be read, `.unsupported` where the
    ///   backend has no file transfer.
    public func copyFromHost(_ source: String, to destination: String, file: String = #filePath, line: Int = #line) async throws(VouchError) {
        let location = SourceLocation(file: file, line: line)
        log.log("copying \(source) from the host to \(destination)", machine: name)
        try await start()
        let transfer = try capability(FileTransfer.self, .files, for: "copyFromHost")
        let fm = FileManager.default
        let staging = "copy-\(UUID().uuidString.prefix(8))"
        let hostStaging = context.sharedDirectory + "/" + staging
        defer { try? fm.removeItem(atPath: hostStaging) }
        do {
            try fm.createDirectory(atPath: hostStaging, withIntermediateDirectories: true)
            try fm.copyItem(atPath: source, toPath: hostStaging + "/item")
        } catch {
            throw VouchError(.other, "cannot stage \(source) for copying", machine: name, location: location, cause: SendableError(error))
        }
        try await transfer.pushShared(staging, shell: try connectedShell())
        let dst = shellQuote(destination)
        try await succeed(
            "mkdir -p \"$(dirname \(dst))\" && cp -r \(transfer.guestSharedDirectory)/\(staging)/item \(dst)", file: file, line: line)
    }

    /// Copies a file or directory from the guest into the test's output
    /// directory (under `targetDirectory`, relative to it unless absolute),
    /// through the shared directory. Returns the host path.
    /// - Throws: `.commandFailed` if the guest-side copy fails; `.other` with
    ///   the cause if it cannot be moved into place.
    @discardableResult
    public func copyFromMachine(_ source: String, to targetDirectory: String = "", file: String = #filePath, line: Int = #line) async throws(VouchError) -> URL {
        let location = SourceLocation(file: file, line: line)
        log.log("copying \(source) from the machine to the output directory", machine: name)
        try await start()
        let transfer = try capability(FileTransfer.self, .files, for: "copyFromMachine")
        let fm = FileManager.default
        let staging = "copy-\(UUID().uuidString.prefix(8))"
        let hostStaging = context.sharedDirectory + "/" + staging
        defer { try? fm.removeItem(atPath: hostStaging) }
        let shared = transfer.guestSharedDirectory
        try await succeed("mkdir -p \(shared)/\(staging) && cp -r \(shellQuote(source)) \(shared)/\(staging)/", file: file, line: line)
        try await transfer.pullShared(staging, shell: try connectedShell())
        let base = (source as NSString).lastPathComponent
        let targetDir = targetDirectory.hasPrefix("/")
            ? URL(fileURLWithPath: targetDirectory) : outputDirectory.appendingPathComponent(targetDirectory)
        let target = targetDir.appendingPathComponent(base)
        do {
            try fm.createDirectory(at: targetDir, withIntermediateDirectories: true)
            try? fm.removeItem(at: target)
            try fm.moveItem(atPath: hostStaging + "/" + base, toPath: target.path)
        } catch {
            throw VouchError(.other, "cannot move \(source) into \(targetDir.path)", machine: name, location: location, cause: SendableError(error))
        }
        return target
    }
}
