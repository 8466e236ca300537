import Glibc

/// A failed system call: which call (and on what), and its errno.
public struct SystemCallError: Error, Sendable, CustomStringConvertible, Equatable {
    /// The call and its object, e.g. `connect /run/x/qmp`.
    public let call: String
    /// The errno it failed with.
    public let errno: Int32

    /// Captures the current `errno` (or the given one) for `call`.
    public init(_ call: String, errno: Int32 = Glibc.errno) {
        self.call = call
        self.errno = errno
    }

    /// `call: strerror(errno)`.
    public var description: String { "\(call): \(String(cString: strerror(errno)))" }
}
