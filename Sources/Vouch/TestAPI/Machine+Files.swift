import Foundation

extension Machine {
    /// Copies a file or directory from the host into the guest at `destination`,
    /// through the shared directory (any size, binary-safe).
    /// - Throws: `VouchError.commandFailed` if the guest-side copy fails,
    ///   `.other` if the host file cannot be read.
    public func copyFromHost(_ source: String, to destination: String, file: String = #filePath, line: Int = #line) async throws {
        log.log("copying \(source) from the host to \(destination)", machine: name)
        try await start()
        let fm = FileManager.default
        let staging = "copy-\(UUID().uuidString.prefix(8))"
        let hostStaging = context.sharedDirectory + "/" + staging
        do {
            try fm.createDirectory(atPath: hostStaging, withIntermediateDirectories: true)
            try fm.copyItem(atPath: source, toPath: hostStaging + "/item")
        } catch {
            try? fm.removeItem(atPath: hostStaging)
            throw VouchError(.other, "cannot stage \(source) for copying: \(error.localizedDescription)", machine: name,
                             location: .init(file: file, line: line))
        }
        defer { try? fm.removeItem(atPath: hostStaging) }
        let shared = currentBackend?.guestSharedDirectory ?? "/tmp/shared"
        try await currentBackend?.pushShared(staging)
        let dst = shellQuote(destination)
        try await succeed(
            "mkdir -p \"$(dirname \(dst))\" && cp -r \(shared)/\(staging)/item \(dst)", file: file, line: line)
    }

    /// Copies a file or directory from the guest into the test's output
    /// directory (under `targetDirectory`, relative to it), through the shared
    /// directory. Returns the host path.
    /// - Throws: `VouchError.commandFailed` if the guest-side copy fails.
    @discardableResult
    public func copyFromMachine(_ source: String, to targetDirectory: String = "", file: String = #filePath, line: Int = #line) async throws -> URL {
        log.log("copying \(source) from the machine to the output directory", machine: name)
        try await start()
        let fm = FileManager.default
        let staging = "copy-\(UUID().uuidString.prefix(8))"
        let hostStaging = context.sharedDirectory + "/" + staging
        defer { try? fm.removeItem(atPath: hostStaging) }
        let shared = currentBackend?.guestSharedDirectory ?? "/tmp/shared"
        try await succeed(
            "mkdir -p \(shared)/\(staging) && cp -r \(shellQuote(source)) \(shared)/\(staging)/", file: file, line: line)
        try await currentBackend?.pullShared(staging)
        let base = (source as NSString).lastPathComponent
        let targetDir = outputDirectory.appendingPathComponent(targetDirectory)
        let target = targetDir.appendingPathComponent(base)
        do {
            try fm.createDirectory(at: targetDir, withIntermediateDirectories: true)
            try? fm.removeItem(at: target)
            try fm.moveItem(atPath: hostStaging + "/" + base, toPath: target.path)
        } catch {
            throw VouchError(.other, "cannot move \(source) into \(targetDir.path): \(error.localizedDescription)",
                             machine: name, location: .init(file: file, line: line))
        }
        return target
    }
}
