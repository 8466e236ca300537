import Foundation
import Glibc

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
enum GuestMemory: Sendable, Equatable {
    case memfd
    case privateFile(String)

    var isShared: Bool { self == .memfd }

    /// The `-object` argument for a backend with id `ram`.
    func objectArgument(sizeMiB: Int) -> String {
        switch self {
        case .memfd:
            "memory-backend-memfd,id=ram,size=\(sizeMiB)M,share=on"
        case .privateFile(let path):
            "memory-backend-file,id=ram,size=\(sizeMiB)M,share=off,mem-path=" + path.replacingOccurrences(of: ",", with: ",,")
        }
    }
}

/// The files of one saved QEMU guest, inside a snapshot directory.
enum QEMUSnapshotFiles {
    /// The device state, as QEMU's migration stream (RAM excluded when shared).
    static let state = "state"
    /// The guest RAM, byte for byte (sparse).
    static let ram = "ram"
    /// The disk overlay's content at snapshot time (qcow2 over the image).
    static let disk = "disk.qcow2"
    /// Bumped whenever the layout or the way it is loaded changes.
    static let formatVersion = 1
}

extension QEMUBackend: SnapshottingBackend {
    func pause() async throws {
        try await control("stop")
    }

    func resume() async throws {
        try await control("cont")
    }

    /// A QMP command that QEMU answers at once, under a deadline so that a
    /// hung QEMU cannot hang the test.
    private func control(_ command: String, timeout: Double = 30) async throws {
        let qmp = try qmp()
        do {
            try await withDeadline(seconds: timeout) { _ = try await qmp.execute(command) }
        } catch is DeadlineExceeded {
            throw VouchError(.timeout, "QEMU did not answer '\(command)' within \(formatSeconds(timeout))", machine: context.name,
                             outputTail: tail(qemuErrors))
        }
    }

    func saveSnapshot(to directory: String) async throws {
        let (process, memory) = state.withLock { ($0.process, $0.memory) }
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
                throw VouchError(.other, "cannot create \(ram): \(SystemError("truncate"))", machine: context.name)
            }
        }
        let overlay = context.stateDirectory + "/root.qcow2"
        if FileManager.default.fileExists(atPath: overlay) {
            try await copySparse(overlay, to: directory + "/" + QEMUSnapshotFiles.disk, what: "disk overlay")
        }
    }

    func restoreSnapshot(from directory: String) async throws -> GuestChannel {
        guard case .direct = config.boot else {
            throw VouchError(.unsupported, "snapshots need a machine booted by Vouch (not a start script)", machine: context.name)
        }
        let accel = try await accelerator()
        await endProcess(discard: true)
        context.log.debug("previous QEMU ended", machine: context.name)
        try FileManager.default.createDirectory(atPath: context.stateDirectory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        var overlay: String?
        let disk = directory + "/" + QEMUSnapshotFiles.disk
        if FileManager.default.fileExists(atPath: disk) {
            // Every restore writes to a fresh overlay; the snapshot's disk stays as saved.
            let path = context.stateDirectory + "/root.qcow2"
            try? FileManager.default.removeItem(atPath: path)
            let (status, output) = try await ChildProcess.run("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", disk, path])
            guard status == .exited(0) else {
                throw VouchError(.bootFailed, "qemu-img could not create an overlay over the snapshot's disk (\(status))",
                                 machine: context.name, outputTail: tail(output))
            }
            overlay = path
        }
        let channel = try await launch(accelerator: accel, overlay: overlay,
                                       memory: .privateFile(directory + "/" + QEMUSnapshotFiles.ram), incoming: true)
        do {
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
        } catch var error as VouchError {
            channel.close()
            await endProcess()
            error.kind = .bootFailed
            error.message = "cannot restore the snapshot in \(directory): \(error.message)"
            if error.outputTail == nil || error.outputTail?.isEmpty == true { error.outputTail = tail(qemuErrors) }
            throw error
        }
        return channel
    }

    func snapshotKey() async throws -> String {
        guard case .direct(let kernel, let initrd, let rootDisk, _) = config.boot else {
            throw VouchError(.unsupported, "boot snapshots need a machine booted by Vouch (not a start script)", machine: context.name)
        }
        let accel = try await accelerator()
        let commandLine = QEMUCommandLine(
            config: config, stateDirectory: context.stateDirectory, sharedDirectory: context.sharedDirectory,
            accelerator: accel, overlay: rootDisk == nil ? nil : context.stateDirectory + "/root.qcow2", network: context.network)
        // Per-run paths (state, shared directory, switch sockets) all live in the run directory.
        let runDirectory = (context.stateDirectory as NSString).deletingLastPathComponent
        let args = commandLine.arguments(hostnameParameter: hostnameParameter, hostname: context.name)
            .map { $0.replacingOccurrences(of: runDirectory, with: "$RUN") }
        var lines = ["format \(QEMUSnapshotFiles.formatVersion)", "qemu \(await Self.qemuVersion(config.qemuBinary))"]
        if accel == .kvm { lines.append("host-cpu \(Self.hostCPUModel)") }
        for file in [kernel, initrd, rootDisk].compactMap({ $0 }) { lines.append("file " + Self.identity(of: file)) }
        lines += args.map { "arg " + $0 }
        return lines.joined(separator: "\n")
    }

    // MARK: - Helpers

    private func accelerator() async throws -> Accelerator.Kind {
        if let known = state.withLock({ $0.accelerator }) { return known }
        return await Accelerator.resolve(config.accelerator, probeKernel: probeKernel, qemu: config.qemuBinary).0
    }

    private func enableIgnoreShared(_ qmp: QMPClient) async throws {
        let capability = JSONValue.object(["capability": .string("x-ignore-shared"), "state": .bool(true)])
        try await qmp.execute("migrate-set-capabilities", ["capabilities": .array([capability])])
    }

    /// Polls `query-migrate` until it completes; migration has no event we
    /// could wait for without enabling the `events` capability.
    private func waitForMigration(_ qmp: QMPClient, what: String, timeout: Double = 300) async throws {
        let deadline = ContinuousClock.now + .seconds(timeout)
        var last = "none"
        while ContinuousClock.now < deadline {
            let info = try await qmp.execute("query-migrate")
            last = info["status"]?.stringValue ?? "none"
            switch last {
            case "completed":
                return
            case "failed", "cancelled":
                let why = info["error-desc"]?.stringValue ?? "no reason given"
                throw VouchError(.other, "\(what) failed: \(why)", machine: context.name, outputTail: tail(qemuErrors))
            default:
                try await Task.sleep(for: .milliseconds(2))
            }
        }
        throw VouchError(.timeout, "\(what) did not finish within \(formatSeconds(timeout)) (migration status: \(last))",
                         machine: context.name, outputTail: tail(qemuErrors))
    }

    private func copySparse(_ source: String, to destination: String, what: String) async throws {
        let (status, output) = try await ChildProcess.run("cp", ["--sparse=always", source, destination])
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

    private static func identity(of file: String) -> String {
        var st = stat()
        guard stat(file, &st) == 0 else { return "\(file) missing" }
        return "\(file) size=\(st.st_size) mtime=\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec) inode=\(st.st_ino)"
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
