import Foundation
import VouchGuest
import VouchSupport

/// Snapshots of a Firecracker microVM: `PATCH /vm` Paused, `PUT
/// /snapshot/create` (a full snapshot: the microVM state and the guest
/// memory, two files), plus a copy of the root disk, which Firecracker
/// leaves out. A restore is a fresh firecracker process that gets `PUT
/// /snapshot/load` before anything else, with the disk copied back first.
///
/// Firecracker resets the guest's vsock connections on a restore, so the
/// shell's connection is gone; the guest's backdoor keeps the shell (and
/// what it started) and hands it to the next connection (`shellAfterRestore`).
extension FirecrackerBackend: Snapshotting {
    static let stateFile = "vmstate"
    static let memoryFile = "memory"

    func prepareSnapshot(_ shell: GuestShell) async throws(VouchError) {}

    func pause() async throws(VouchError) {
        try await api.call("PATCH", "/vm", body: ["state": "Paused"])
    }

    func resume() async throws(VouchError) {
        try await api.call("PATCH", "/vm", body: ["state": "Resumed"])
    }

    func saveSnapshot(to directory: String) async throws(VouchError) {
        try await api.call("PUT", "/snapshot/create", body: [
            "snapshot_type": "Full", "snapshot_path": .string(directory + "/" + Self.stateFile),
            "mem_file_path": .string(directory + "/" + Self.memoryFile),
        ], timeout: 120)
        try await saveDisk(into: directory)
    }

    func restoreSnapshot(from directory: String) async throws(VouchError) -> GuestChannel? {
        await vmm.end(discard: true)
        try vmm.makeStateDirectory()
        try await restoreDisk(from: directory)
        do throws(VouchError) {
            _ = try await vmm.launch(arguments)
            try await api.call("PUT", "/snapshot/load", body: [
                "snapshot_path": .string(directory + "/" + Self.stateFile),
                "mem_backend": ["backend_type": "File", "backend_path": .string(directory + "/" + Self.memoryFile)],
                "resume_vm": false,
            ], timeout: 120)
        } catch {
            await vmm.end(discard: true)
            throw VouchError(.bootFailed, "firecracker could not load the snapshot in \(directory): \(error.message)", machine: context.name,
                             outputTail: tail(vmm.stderrText.text), cause: error)
        }
        return nil
    }

    func shellAfterRestore(until deadline: Deadline) async throws(VouchError) -> GuestChannel {
        try await vmm.connectShell(until: deadline)
    }

    func commandsAfterResume(restoredFrom directory: String?) -> [String] { [] }

    func snapshotKey() async throws(VouchError) -> String {
        MicroVMGuest.snapshotKey(vmm: vmm, guest: guest, memoryMiB: memoryMiB, cpus: cpus)
    }
}
