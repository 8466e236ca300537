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
    static let diskFile = "root.img"

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
        if guest.rootDisk != nil {
            try await copy(context.stateDirectory + "/" + Self.diskFile, to: directory + "/" + Self.diskFile)
        }
    }

    func restoreSnapshot(from directory: String) async throws(VouchError) -> GuestChannel? {
        let name = context.name
        await endProcess(discard: true)
        try vouching("cannot create the state directory \(context.stateDirectory)", machine: name) {
            try FileManager.default.createDirectory(atPath: context.stateDirectory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        }
        if guest.rootDisk != nil {
            let disk = context.stateDirectory + "/" + Self.diskFile
            try? FileManager.default.removeItem(atPath: disk)
            try await copy(directory + "/" + Self.diskFile, to: disk)
        }
        let process = try spawn()
        do throws(VouchError) {
            try await waitForAPISocket(process)
            try await api.call("PUT", "/snapshot/load", body: [
                "snapshot_path": .string(directory + "/" + Self.stateFile),
                "mem_backend": ["backend_type": "File", "backend_path": .string(directory + "/" + Self.memoryFile)],
                "resume_vm": false,
            ], timeout: 120)
        } catch {
            await endProcess(discard: true)
            throw VouchError(.bootFailed, "firecracker could not load the snapshot in \(directory): \(error.message)", machine: name,
                             outputTail: tail(stderrText.text), cause: error)
        }
        return nil
    }

    func shellAfterRestore(until deadline: Deadline) async throws(VouchError) -> GuestChannel {
        guard let process = state.withLock({ $0.process }) else {
            throw VouchError(.bootFailed, "firecracker is not running", machine: context.name)
        }
        let channel = try await VsockConnector.connect(path: vsockSocket, port: MicroVMGuest.backdoorPort, machine: context.name,
                                                       until: deadline, unless: { process.exitStatus != nil })
        state.withLock { $0.channel = channel }
        context.health.watch(channel.input)
        return channel
    }

    func commandsAfterResume(restoredFrom directory: String?) -> [String] { [] }

    func snapshotKey() async throws(VouchError) -> String {
        var lines = ["format 1", "vmm \(binary.version)", "memory \(memoryMiB)", "cpus \(cpus)"]
        for file in [guest.kernel, guest.initrd, guest.rootDisk].compactMap({ $0 }) { lines.append("file " + SnapshotFacts.identity(of: file)) }
        lines.append("cmdline " + guest.commandLine(name: context.name, network: context.network))
        lines += (context.network?.attachments ?? []).map { "nic \($0.nic.vlan) \($0.nic.mac) \($0.tap ?? "-")" }
        return lines.joined(separator: "\n")
    }

    private func copy(_ source: String, to destination: String) async throws(VouchError) {
        let (status, output) = try await ChildProcess.run("cp", ["--reflink=auto", "--sparse=always", source, destination], timeout: 300)
        guard status == .exited(0) else {
            throw VouchError(.other, "cannot copy \(source) to \(destination) (\(status))", machine: context.name, outputTail: tail(output))
        }
    }
}
