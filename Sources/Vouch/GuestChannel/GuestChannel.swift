/// A byte stream to a guest's backdoor shell: bytes in, a way to send bytes out.
///
/// Backends build one from whatever carries the shell (the virtconsole socket,
/// a vsock CONNECT stream, an nsenter pipe, an ssh session); `GuestShell`
/// speaks the protocol on top and never knows which.
struct GuestChannel: Sendable {
    /// Bytes from the guest.
    let input: ByteQueue
    /// Sends bytes to the guest. Throws when the stream is gone.
    let send: @Sendable ([UInt8]) throws -> Void
    /// Closes the stream; `input` ends.
    let close: @Sendable () -> Void
}
