import Foundation
import VouchGuest
import VouchSupport

/// Snapshots of a cloud-hypervisor VM: `vm.pause`, `vm.snapshot` into a
/// `file://` directory, plus a copy of the root disk, which the snapshot
/// leaves out. A restore is a fresh process given `vm.restore` before any
/// VM exists; the VM comes back paused and `vm.resume` lets it run. As on
/// firecracker, the guest's vsock connection is gone after a restore and
/// the backdoor hands its shell to the next one.
extension CloudHypervisorBackend: Snapshotting {
    func prepareSnapshot(_ shell: GuestShell) async throws(VouchError) {}
    func pause() async throws(VouchError) { try await put("vm.pause") }
    func resume() async throws(VouchError) { try await put("vm.resume") }

    func saveSnapshot(to directory: String) async throws(VouchError) {
        try await put("vm.snapshot", body: ["destination_url": .string("file://" + directory)], timeout: 120)
        try await saveDisk(into: directory)
    }

    func restoreSnapshot(from directory: String) async throws(VouchError) -> GuestChannel? {
        await vmm.end(discard: true)
        try vmm.makeStateDirectory()
        try await restoreDisk(from: directory)
        do throws(VouchError) {
            _ = try await vmm.launch(arguments)
            try await put("vm.restore", body: ["source_url": .string("file://" + directory)], timeout: 120)
        } catch {
            await vmm.end(discard: true)
            throw VouchError(.bootFailed, "cloud-hypervisor could not restore the snapshot in \(directory): \(error.message)",
                             machine: context.name, outputTail: tail(vmm.stderrText.text), cause: error)
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
