import Foundation
import VouchGuest
import VouchSupport

/// Copies items of the shared directory into and out of a guest that has no
/// shared file system (firecracker has no 9p or virtio-fs), through its
/// backdoor shell: a tar stream, typed on the shell's terminal as base64 in
/// chunks (read by `head -c` from /dev/tty: the terminal passes printable
/// bytes only, and bash itself would read them a byte at a time), and read
/// back as raw output (the framing is binary-safe).
package enum ShellFileCopy {
    /// Bytes of tar per command on the way in (1 MiB of base64).
    static let chunk = 768 << 10

    /// Makes `item` of `hostShared` appear under `guestShared` in the guest.
    /// - Throws: `.other` when the host cannot pack it; `.commandFailed`
    ///   (with the guest's output) when the guest cannot unpack it.
    package static func push(_ item: String, from hostShared: String, to guestShared: String,
                             shell: GuestShell, machine: String) async throws(VouchError) {
        let archive = hostShared + "/.vouch-push-\(UUID().uuidString.prefix(8)).tar"
        defer { try? FileManager.default.removeItem(atPath: archive) }
        try await hostTar(["-C", hostShared, "-cf", archive, item], what: "pack \(item)", machine: machine)
        let bytes: Data
        do { bytes = try Data(contentsOf: URL(fileURLWithPath: archive)) } catch {
            throw VouchError(.other, "cannot read the archive of \(item)", machine: machine, cause: SendableError(error))
        }
        let staging = "/tmp/.vouch-push-\(UUID().uuidString.prefix(8)).b64"
        try await run(": > \(staging)", shell: shell, machine: machine)
        var offset = 0
        while offset < bytes.count {
            let piece = Array(bytes[offset..<min(offset + chunk, bytes.count)].base64EncodedString().utf8)
            try await run("head -c \(piece.count) </dev/tty >> \(staging)", input: piece, shell: shell, machine: machine)
            offset += chunk
        }
        try await run("mkdir -p \(shellQuote(guestShared)) && base64 -d \(staging) | tar -x -C \(shellQuote(guestShared)) -f -; s=$?; rm -f \(staging); exit $s",
                      shell: shell, machine: machine)
    }

    /// Brings `item` of `guestShared` in the guest into `hostShared`.
    /// - Throws: `.commandFailed` when the guest cannot pack it; `.other`
    ///   when the host cannot unpack it.
    package static func pull(_ item: String, from guestShared: String, to hostShared: String,
                             shell: GuestShell, machine: String) async throws(VouchError) {
        // Through cat: GNU tar refuses to write an archive to a terminal (the shell's pty).
        let result = try await run("tar -C \(shellQuote(guestShared)) -cf - \(shellQuote(item)) | cat", shell: shell, machine: machine)
        let archive = hostShared + "/.vouch-pull-\(UUID().uuidString.prefix(8)).tar"
        defer { try? FileManager.default.removeItem(atPath: archive) }
        guard FileManager.default.createFile(atPath: archive, contents: Data(result.output)) else {
            throw VouchError(.other, "cannot write the archive of \(item) to \(hostShared)", machine: machine)
        }
        try await hostTar(["-C", hostShared, "-xf", archive], what: "unpack \(item)", machine: machine)
    }

    @discardableResult
    private static func run(_ command: String, input: [UInt8] = [], shell: GuestShell, machine: String) async throws(VouchError) -> CommandResult {
        let result = try await shell.run(command, input: input, until: Deadline(seconds: 120))
        guard result.status == 0 else {
            throw VouchError(.commandFailed, "copying through the shell failed in the guest", machine: machine,
                             command: String(command.prefix(120)), status: result.status,
                             outputTail: tail(String(decoding: result.output.suffix(4096), as: UTF8.self)))
        }
        return result
    }

    private static func hostTar(_ args: [String], what: String, machine: String) async throws(VouchError) {
        let (status, output) = try await ChildProcess.run("tar", args, timeout: 120)
        guard status == .exited(0) else {
            throw VouchError(.other, "tar could not \(what) on the host (\(status))", machine: machine, outputTail: tail(output))
        }
    }
}
