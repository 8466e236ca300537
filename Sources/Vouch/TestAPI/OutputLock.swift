import Foundation
import Glibc
import Synchronization
import VouchSupport

/// Claims a run's output directory for as long as the run lasts: a second
/// run given the same `-o` is refused with the first one's pid, instead of
/// the two mixing their logs and reports. The lock is an `flock` on a file
/// in the directory, so it goes with the process however it ends.
final class OutputLock: Sendable {
    private let fd = Mutex<Int32>(-1)
    private let path: String

    static let fileName = ".vouch.lock"

    /// - Throws: `.invalidSpec` naming the live run that holds `directory`.
    init(directory: URL) throws(VouchError) {
        path = directory.appendingPathComponent(Self.fileName).path
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw VouchError(.other, "cannot create \(path)", cause: SystemCallError("open \(path)"))
        }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            var buffer = [UInt8](repeating: 0, count: 32)
            let n = read(descriptor, &buffer, buffer.count)
            close(descriptor)
            let holder = n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : "unknown"
            throw VouchError(.invalidSpec, "output directory \(directory.path) is in use by another vouch run (pid \(holder)); give this run its own -o")
        }
        _ = ftruncate(descriptor, 0)
        let pid = Array("\(getpid())\n".utf8)
        _ = pid.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }
        fd.withLock { $0 = descriptor }
    }

    /// Lets other runs use the directory. Safe to call twice.
    func release() {
        fd.withLock { descriptor in
            guard descriptor >= 0 else { return }
            unlink(path)
            close(descriptor)
            descriptor = -1
        }
    }

    deinit { release() }
}
