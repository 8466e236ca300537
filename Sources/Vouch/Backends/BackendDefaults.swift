/// Machine calls that not every backend can honour, checked up front so a
/// refusal leaves the machine exactly as it was.
enum MachineOperation: String, Sendable {
    case shutdown, reboot, crash
}

extension Backend {
    /// VMs and containers support every operation.
    func check(_ operation: MachineOperation) throws {}

    /// VMs mount the 9p share here and containers bind-mount it here.
    var guestSharedDirectory: String { "/tmp/shared" }

    /// The share is live for VMs and containers: nothing to copy.
    func pushShared(_ item: String) async throws {}

    /// The share is live for VMs and containers: nothing to copy.
    func pullShared(_ item: String) async throws {}

    /// Only QEMU has a monitor.
    func monitorCommand(_ command: String) async throws -> String {
        throw VouchError(.unsupported, "the \(kind) backend has no QEMU monitor", command: command)
    }
}
