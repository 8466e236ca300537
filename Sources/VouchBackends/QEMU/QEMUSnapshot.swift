import Foundation
import Glibc
import VouchGuest
import VouchSupport
import VouchWire

/// Where a QEMU guest's RAM lives.
///
/// A cold-booted guest gets a *shared* memfd. With the migration capability
/// `x-ignore-shared`, QEMU leaves shared RAM out of the migration stream, so
/// saving a snapshot writes only device state, and the RAM is copied once
/// from the memfd (its untouched pages are holes and cost nothing).
///
/// A restored guest maps the snapshot's RAM file *privately*: restoring maps
/// instead of copying, pages are read lazily and copied only when the guest
/// writes them, and the snapshot file stays unchanged for the next restore.
/// QEMU 7.2 accepts a private destination block: the stream then simply
/// carries no pages for it.
package enum GuestMemory: Sendable, Equatable {
    case memfd
    case privateFile(String)

    package var isShared: Bool { self == .memfd }

    /// The `-object` argument for a backend with id `ram`.
    package func objectArgument(sizeMiB: Int) -> String {
        switch self {
        case .memfd:
            "memory-backend-memfd,id=ram,size=\(sizeMiB)M,share=on"
        case .privateFile(let path):
            "memory-backend-file,id=ram,size=\(sizeMiB)M,share=off,mem-path=" + path.replacingOccurrences(of: ",", with: ",,")
        }
    }
}

/// The files of one saved QEMU guest, inside a snapshot directory.
package enum QEMUSnapshotFiles {
    /// The device state, as QEMU's migration stream (RAM excluded when shared).
    package static let state = "state"
    /// The guest RAM, byte for byte (sparse).
    package static let ram = "ram"
    /// The disk overlay's content at snapshot time (qcow2 over the image).
    package static let disk = "disk.qcow2"
    /// The guest's 9p mounts taken down before saving (JSON list of [tag, mount point]).
    package static let mounts = "9p-mounts.json"
    /// Bumped whenever the layout or the way it is loaded changes.
    package static let formatVersion = 2
}

extension QEMUBackend: Snapshotting {
    /// QEMU refuses to migrate while a 9p export is mounted: take the guest's
    /// 9p mounts down (shell builtins list them; no awk needed in the guest).
    func prepareSnapshot(_ shell: GuestShell) async throws(VouchError) {
        guard case .direct = config.boot else {
            throw VouchError(.unsupported, "snapshots need a machine booted by Vouch (not a start script)", machine: context.name)
        }
        let deadline = Deadline(seconds: 60)
        let listing = try await shell.run(
            "while read -r src dir type rest; do if [ \"$type\" = 9p ]; then echo \"$src\"; echo \"$dir\"; fi; done < /proc/mounts",
            until: deadline)
        guard listing.status == 0 else {
            throw VouchError(.commandFailed, "cannot list the guest's mounts", machine: context.name, status: listing.status,
                             outputTail: tail(listing.text))
        }
        let fields = listing.text.split(separator: "\n").map(String.init)
        var mounts: [[String]] = []
        for i in stride(from: 0, to: fields.count - 1, by: 2) { mounts.append([fields[i], fields[i + 1]]) }
        var done: [[String]] = []
        for mount in mounts.reversed() {
            let result = try await shell.run("umount \(shellQuote(mount[1]))", until: deadline)
            guard result.status == 0 else {
                if !done.isEmpty { _ = try? await shell.run(done.reversed().map(Self.mountCommand).joined(separator: "; "), until: deadline) }
                throw VouchError(.other, "cannot snapshot: the shared directory \(mount[1]) is busy in the guest (QEMU cannot save a guest with a mounted 9p share)",
                                 machine: context.name, command: "umount \(mount[1])", status: result.status, outputTail: tail(result.text))
            }
            done.append(mount)
        }
        state.withLock { $0.unmounted = mounts }
    }

    func commandsAfterResume(restoredFrom directory: String?) -> [String] {
        var mounts = state.withLock { s in defer { s.unmounted = [] }; return s.unmounted }
        if let directory, let data = FileManager.default.contents(atPath: directory + "/" + QEMUSnapshotFiles.mounts),
           let saved = try? JSONDecoder().decode([[String]].self, from: data) {
            mounts = saved
        }
        return mounts.map(Self.mountCommand)
    }

    private static func mountCommand(_ mount: [String]) -> String {
        "mount -t 9p -o trans=virtio,version=9p2000.L,msize=131072 \(shellQuote(mount[0])) \(shellQuote(mount[1]))"
    }

    func pause() async throws(VouchError) {
        state.withLock { $0.pausing = true }
        do { try await control("stop") } catch {
            state.withLock { $0.pausing = false }
            throw error
        }
    }

    func resume() async throws(VouchError) {
        try await control("cont")
        state.withLock { $0.pausing = false }
    }

    /// A QMP command that QEMU answers at once, under a deadline so that a
    /// hung QEMU cannot hang the test.
    private func control(_ command: String, timeout: Double = 30) async throws(VouchError) {
        do {
            try await qmp().execute(command, timeout: timeout)
        } catch {
            var error = error
            if error.outputTail == nil { error.outputTail = tail(qemuErrors) }
            throw error
        }
    }

    func saveSnapshot(to directory: String) async throws(VouchError) {
        let (process, memory, mounts) = state.withLock { ($0.process, $0.memory, $0.unmounted) }
        guard let process, process.exitStatus == nil, let memory else {
            throw VouchError(.unsupported, "snapshots need a running machine booted by Vouch (not a start script)", machine: context.name)
        }
        let qmp = try qmp()
        try await enableIgnoreShared(qmp)
        try await qmp.execute("migrate", ["uri": .string("exec:cat > " + shellQuote(directory + "/" + QEMUSnapshotFiles.state))])
        try await waitForMigration(qmp, what: "saving the device state")

        let ram = directory + "/" + QEMUSnapshotFiles.ram
        if memory.isShared {
            // QEMU keeps the memfd open; copying it through /proc keeps holes.
            guard let fd = memfdPath(pid: process.pid) else {
                throw VouchError(.other, "cannot find QEMU's guest memory file in /proc/\(process.pid)/fd", machine: context.name)
            }
            try await copySparse(fd, to: ram, what: "guest RAM")
        } else {
            // A restored guest's RAM is private, so it travelled in the stream:
            // the file only has to exist with the right size.
            guard FileManager.default.createFile(atPath: ram, contents: nil),
                  truncate(ram, off_t(config.memoryMiB) << 20) == 0 else {
                throw VouchError(.other, "cannot create \(ram)", machine: context.name, cause: SystemCallError("truncate \(ram)"))
            }
        }
        let overlay = context.stateDirectory + "/root.qcow2"
        if FileManager.default.fileExists(atPath: overlay) {
            try await copySparse(overlay, to: directory + "/" + QEMUSnapshotFiles.disk, what: "disk overlay")
        }
        try vouching("cannot record the guest's mounts in \(directory)", machine: context.name) {
            try JSONEncoder().encode(mounts).write(to: URL(fileURLWithPath: directory + "/" + QEMUSnapshotFiles.mounts))
        }
    }

    func restoreSnapshot(from directory: String) async throws(VouchError) -> GuestChannel? {
        guard case .direct = config.boot else {
            throw VouchError(.unsupported, "snapshots need a machine booted by Vouch (not a start script)", machine: context.name)
        }
        let accel = await accelerator()
        await endProcess(discard: true)
        context.log.debug("previous QEMU ended", machine: context.name)
        try makeStateDirectory()
        var overlay: String?
        let disk = directory + "/" + QEMUSnapshotFiles.disk
        if FileManager.default.fileExists(atPath: disk) {
            // Every restore writes to a fresh overlay; the snapshot's disk stays as saved.
            let path = context.stateDirectory + "/root.qcow2"
            try? FileManager.default.removeItem(atPath: path)
            try await qemuImg(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", disk, path], what: "create an overlay over the snapshot's disk")
            overlay = path
        }
        let channel = try await launch(accelerator: accel, overlay: overlay,
                                       memory: .privateFile(directory + "/" + QEMUSnapshotFiles.ram), incoming: true)
        do throws(VouchError) {
            let qmp = try qmp()
            try await enableIgnoreShared(qmp)
            try await qmp.execute("migrate-incoming", ["uri": .string("exec:cat " + shellQuote(directory + "/" + QEMUSnapshotFiles.state))])
            try await waitForMigration(qmp, what: "loading the device state")
            context.log.debug("snapshot device state loaded", machine: context.name)
            // Forwards are host-side settings, not guest state: the test's
            // ports keep working across a restore.
            let forwards = state.withLock { s in defer { s.forwards.removeAll() }; return s.forwards }
            for forward in forwards { try await forwardPort(hostPort: forward.host, guestPort: forward.guest) }
            // Likewise a link cut with block() stays cut.
            if state.withLock({ $0.linksDown }) { try await setLinks(up: false) }
        } catch {
            channel.close()
            await endProcess()
            let output = error.outputTail.flatMap { $0.isEmpty ? nil : $0 } ?? tail(qemuErrors)
            throw VouchError(.bootFailed, "cannot restore the snapshot in \(directory): \(error.message)", machine: context.name,
                             outputTail: output, cause: error)
        }
        return channel
    }

    func snapshotKey() async throws(VouchError) -> String {
        guard case .direct(let kernel, let initrd, let rootDisk, _) = config.boot else {
            throw VouchError(.unsupported, "boot snapshots need a machine booted by Vouch (not a start script)", machine: context.name)
        }
        let accel = await accelerator()
        let commandLine = QEMUCommandLine(
            config: config, stateDirectory: context.stateDirectory, sharedDirectory: context.sharedDirectory,
            accelerator: accel, overlay: rootDisk == nil ? nil : context.stateDirectory + "/root.qcow2", network: context.network)
        // Per-run paths (state, shared directory, switch sockets) all live in the run directory.
        let runDirectory = (context.stateDirectory as NSString).deletingLastPathComponent
        let args = commandLine.arguments(hostnameParameter: hostnameParameter, hostname: HostName.forNode(context.name))
            .map { $0.replacingOccurrences(of: runDirectory, with: "$RUN") }
        var lines = ["format \(QEMUSnapshotFiles.formatVersion)", "qemu \(await Self.qemuVersion(config.qemuBinary))"]
        if accel == .kvm { lines.append("host-cpu \(Self.hostCPUModel)") }
        for file in [kernel, initrd, rootDisk].compactMap({ $0 }) { lines.append("file " + SnapshotFacts.identity(of: file)) }
        lines += args.map { "arg " + $0 }
        return lines.joined(separator: "\n")
    }

    // MARK: - Helpers

    private func accelerator() async -> Accelerator.Kind {
        if let known = state.withLock({ $0.accelerator }) { return known }
        return await Accelerator.resolve(config.accelerator, probeKernel: probeKernel, qemu: config.qemuBinary).0
    }

    private func enableIgnoreShared(_ qmp: QMPClient) async throws(VouchError) {
        let capability = JSONValue.object(["capability": .string("x-ignore-shared"), "state": .bool(true)])
        try await qmp.execute("migrate-set-capabilities", ["capabilities": .array([capability])])
    }

    /// Polls `query-migrate` until it completes; migration has no event we
    /// could wait for without enabling the `events` capability.
    private func waitForMigration(_ qmp: QMPClient, what: String, timeout: Double = 300) async throws(VouchError) {
        let deadline = Deadline(seconds: timeout)
        var last = "none"
        while !deadline.hasPassed {
            let info = try await qmp.execute("query-migrate")
            last = info["status"]?.stringValue ?? "none"
            switch last {
            case "completed":
                return
            case "failed", "cancelled":
                let why = info["error-desc"]?.stringValue ?? "no reason given"
                throw VouchError(.other, "\(what) failed: \(why)", machine: context.name, outputTail: tail(qemuErrors))
            default:
                try await delay(0.002)
            }
        }
        throw VouchError(.timeout, "\(what) did not finish within \(formatSeconds(timeout)) (migration status: \(last))",
                         machine: context.name, outputTail: tail(qemuErrors))
    }

    private func copySparse(_ source: String, to destination: String, what: String) async throws(VouchError) {
        let (status, output) = try await ChildProcess.run("cp", ["--sparse=always", source, destination], timeout: 300)
        guard status == .exited(0) else {
            throw VouchError(.other, "cannot copy the \(what) into the snapshot (\(status))", machine: context.name, outputTail: tail(output))
        }
    }

    /// `/proc/PID/fd/N` of QEMU's guest RAM memfd.
    private func memfdPath(pid: pid_t) -> String? {
        let dir = "/proc/\(pid)/fd"
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
            let path = dir + "/" + entry
            if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: path),
               target.hasPrefix("/memfd:memory-backend-memfd") {
                return path
            }
        }
        return nil
    }

    private static let hostCPUModel: String = {
        let info = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        return info.split(separator: "\n").first { $0.hasPrefix("model name") }.map(String.init) ?? "unknown"
    }()

    private static func qemuVersion(_ binary: String) async -> String {
        guard let (status, output) = try? await ChildProcess.run(binary, ["--version"]), status == .exited(0) else { return "unknown" }
        return output.split(separator: "\n").first.map(String.init) ?? "unknown"
    }
}
