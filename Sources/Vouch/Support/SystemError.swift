import Glibc

/// A failed system call, with the errno text.
struct SystemError: Error, CustomStringConvertible {
    let call: String
    let errno: Int32

    init(_ call: String, errno: Int32 = Glibc.errno) {
        self.call = call
        self.errno = errno
    }

    var description: String { "\(call): \(String(cString: strerror(errno)))" }
}
