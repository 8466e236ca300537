import Glibc

/// Pseudo-terminals: what a guest shell runs on when there is no virtio
/// console (containers, the fake guest of the unit tests).
package enum PTY {
    /// A new pty pair (master, slave), both close-on-exec; the slave is not
    /// our controlling terminal.
    /// - Throws: `.spawnFailed` with the failing call as the cause.
    package static func open() throws(VouchError) -> (master: Int32, slave: Int32) {
        let master = Glibc.open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard master >= 0 else {
            throw VouchError(.spawnFailed, "cannot open a pseudo-terminal", cause: SystemCallError("open /dev/ptmx"))
        }
        var name = [CChar](repeating: 0, count: 128)
        guard Calls.grantpt(master) == 0, Calls.unlockpt(master) == 0, Calls.ptsname_r(master, &name, name.count) == 0 else {
            let error = SystemCallError("grantpt/unlockpt/ptsname_r")
            close(master)
            throw VouchError(.spawnFailed, "cannot set up a pseudo-terminal", cause: error)
        }
        let slave = Glibc.open(name, O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard slave >= 0 else {
            let path = String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let error = SystemCallError("open \(path)")
            close(master)
            throw VouchError(.spawnFailed, "cannot open the pseudo-terminal slave", cause: error)
        }
        return (master, slave)
    }

    /// glibc's pty functions, which the Glibc module does not import (they
    /// need `_XOPEN_SOURCE`), looked up at run time.
    private enum Calls {
        typealias FDCall = @convention(c) (Int32) -> Int32
        typealias NameCall = @convention(c) (Int32, UnsafeMutablePointer<CChar>?, Int) -> Int32

        nonisolated(unsafe) static let handle = dlopen(nil, RTLD_NOW)

        static func symbol<T>(_ name: String, as type: T.Type) -> T {
            guard let pointer = dlsym(handle, name) else { fatalError("libc has no \(name)") }
            return unsafeBitCast(pointer, to: type)
        }

        static let grantpt = symbol("grantpt", as: FDCall.self)
        static let unlockpt = symbol("unlockpt", as: FDCall.self)
        static let ptsname_r = symbol("ptsname_r", as: NameCall.self)
    }
}
