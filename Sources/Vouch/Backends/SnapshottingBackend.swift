/// A backend that can save a running guest and bring it back later.
///
/// Kept apart from `Backend` so that backends without snapshots need no
/// change: `Machine` asks `backend as? SnapshottingBackend` and reports
/// `VouchError.unsupported` otherwise.
///
/// The steps are separate so that several machines can be paused together
/// before any is saved, and resumed together after all are restored.
protocol SnapshottingBackend: Backend {
    /// Freezes the guest's CPUs and devices.
    /// - Throws: `VouchError.qmpError` / `.machineDown`.
    func pause() async throws

    /// Lets a paused (or just restored) guest run again.
    /// - Throws: `VouchError.qmpError` / `.machineDown`.
    func resume() async throws

    /// Writes the paused guest's complete state (devices, RAM, disks) into
    /// `directory`, which exists and is empty. The guest stays paused.
    /// - Throws: `VouchError` saying which part could not be saved.
    func saveSnapshot(to directory: String) async throws

    /// Replaces the running guest with the one saved in `directory`, paused,
    /// and returns the channel to its (still running) backdoor shell.
    /// - Throws: `VouchError.bootFailed` with the reason when the snapshot
    ///   cannot be loaded; the machine is then down.
    func restoreSnapshot(from directory: String) async throws -> GuestChannel

    /// Everything outside the snapshot that a restored guest depends on
    /// (images, command line, memory, QEMU version...), one fact per line,
    /// without per-run paths. Equal keys mean a snapshot can be reused.
    /// - Throws: `VouchError.unsupported` where snapshots cannot be reused.
    func snapshotKey() async throws -> String
}
