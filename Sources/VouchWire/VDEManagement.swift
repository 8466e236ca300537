import VouchSupport

/// The management console of a `vde_switch` (`--mgmt SOCKET`): text
/// commands, each answered by lines ending in a `1000 Success` (or an error
/// code) line.
package enum VDEManagement {
    /// Waits until the switch's management socket answers `showinfo` with
    /// `1000 Success`, which means the switch is ready for QEMU to plug in.
    /// - Throws: `.other` when the socket never appears, closes or answers
    ///   something else before `timeout` seconds; `.timeout`; `.cancelled`.
    package static func waitReady(socket: String, timeout: Double, stillStarting: @escaping @Sendable () -> Bool) async throws(VouchError) {
        let deadline = Deadline(seconds: timeout)
        let fd = try await UnixSocket.connect(path: socket, retryingFor: timeout, unless: { !stillStarting() })
        let reader = FDReader(fd: fd, name: "vde-mgmt")
        defer { reader.shutdownSocket() }
        try await writeAll(fd: fd, Array("showinfo\n".utf8), what: "write to \(socket)", until: deadline)
        var seen: [UInt8] = []
        while true {
            switch try await reader.queue.next(until: deadline) {
            case .bytes(let chunk):
                seen += chunk
                if firstRange(of: Array("1000 Success".utf8), in: seen) != nil { return }
            case .end:
                throw VouchError(.other, "the switch's management socket closed after: \(String(decoding: seen, as: UTF8.self))")
            case .timedOut:
                throw VouchError(.timeout, "the switch's management socket did not answer showinfo within \(formatSeconds(timeout))",
                                 outputTail: String(decoding: seen, as: UTF8.self))
            }
        }
    }
}
