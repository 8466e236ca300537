import Foundation

/// What the guest side of a snapshot needs to know when it comes back.
struct GuestSnapshotInfo: Codable, Sendable {
    /// 9p mounts (tag, mount point) taken down before saving: QEMU refuses
    /// to migrate while a 9p export is mounted, so they are remounted after.
    var mounts: [[String]] = []

    static let file = "guest.json"
}

/// A machine being snapshotted: paused between commands, shell held.
struct SnapshotSession: Sendable {
    let machine: Machine
    let backend: any SnapshottingBackend
    let shell: GuestShell
    let info: GuestSnapshotInfo
}

extension Machine {
    /// Saves the running machine (memory, devices, disk) as `name`, replacing
    /// an earlier snapshot of that name. Boots the machine first if needed.
    /// The guest is paused only while its state is written; it then goes on.
    /// - Throws: `VouchError.unsupported` for backends without snapshots,
    ///   or what went wrong while saving (the guest keeps running).
    public func snapshot(_ name: String) async throws {
        let final = try snapshotLink(name)
        let began = ContinuousClock.now
        let session = try await beginSnapshot()
        let directory: String
        do {
            try await session.backend.pause()
            directory = try await writeSnapshot(session, into: nil)
        } catch {
            await endSnapshot(session)
            throw error
        }
        await endSnapshot(session)
        try publish(directory, as: final)
        log.log(String(format: "saved snapshot '\(name)' (%.3f s)", (ContinuousClock.now - began).seconds), machine: self.name)
    }

    /// Brings the machine back exactly as it was at `snapshot(name)`: files
    /// written since are gone, processes running then run again, and the
    /// shell answers at once. A snapshot can be restored any number of times.
    /// - Throws: `VouchError.other` if there is no such snapshot,
    ///   `.bootFailed` if it cannot be loaded (the machine is then down).
    public func restore(_ name: String) async throws {
        let began = ContinuousClock.now
        let directory = try snapshotDirectory(name)
        let (backend, channel, info) = try await beginRestore(from: directory)
        do { try await backend.resume() } catch { channel.close(); throw error }
        try await finishRestore(channel, info: info)
        log.log(String(format: "restored snapshot '\(name)' (%.3f s)", (ContinuousClock.now - began).seconds), machine: self.name)
    }

    // MARK: - Steps, shared with Driver.snapshotAll / restoreAll and the boot cache

    /// Takes the 9p mounts down and holds the shell, so no command is in
    /// flight while the guest is saved.
    func beginSnapshot() async throws -> SnapshotSession {
        try await start()
        guard let backend = backend as? any SnapshottingBackend else {
            throw VouchError(.unsupported, "the \(backend?.kind ?? "unknown") backend cannot take snapshots", machine: name)
        }
        guard let shell else { throw VouchError(.machineDown, "the machine is not running", machine: name) }
        // Shell builtins only: no exec, and no dependence on awk in the guest.
        let listing = try await execute("while read -r src dir type rest; do if [ \"$type\" = 9p ]; then echo \"$src\"; echo \"$dir\"; fi; done < /proc/mounts")
        guard listing.status == 0 else {
            throw VouchError(.commandFailed, "cannot list the guest's mounts", machine: name, status: listing.status, outputTail: tail(listing.text))
        }
        let fields = listing.text.split(separator: "\n").map(String.init)
        var info = GuestSnapshotInfo()
        for i in stride(from: 0, to: fields.count - 1, by: 2) { info.mounts.append([fields[i], fields[i + 1]]) }
        for mount in info.mounts.reversed() {
            let result = try await execute("umount \(shellQuote(mount[1]))")
            if result.status != 0 {
                await remount(info.mounts)
                throw VouchError(.other, "cannot snapshot: the shared directory \(mount[1]) is busy in the guest (QEMU cannot save a guest with a mounted 9p share)",
                                 machine: name, command: "umount \(mount[1])", status: result.status, outputTail: tail(result.text))
            }
        }
        try await shell.acquire()
        return SnapshotSession(machine: self, backend: backend, shell: shell, info: info)
    }

    /// Saves the paused guest into a new directory (next to the named
    /// snapshots, or inside `parent`) and returns it.
    func writeSnapshot(_ session: SnapshotSession, into parent: String?) async throws -> String {
        let directory = try makePrivateDirectory(in: parent ?? snapshotsRoot())
        do {
            try await writeSnapshot(session, to: directory)
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
        return directory
    }

    /// Saves the paused guest into the existing, empty `directory`.
    func writeSnapshot(_ session: SnapshotSession, to directory: String) async throws {
        try await session.backend.saveSnapshot(to: directory)
        try JSONEncoder().encode(session.info).write(to: URL(fileURLWithPath: directory + "/" + GuestSnapshotInfo.file))
    }

    /// Lets the guest run again after a snapshot and puts its mounts back.
    func endSnapshot(_ session: SnapshotSession) async {
        do { try await session.backend.resume() } catch { log.warning("cannot resume after the snapshot: \(error)", machine: name) }
        await session.shell.release()
        await remount(session.info.mounts)
    }

    /// Replaces the running guest by the one in `directory`, left paused.
    func beginRestore(from directory: String) async throws -> (any SnapshottingBackend, GuestChannel, GuestSnapshotInfo) {
        let data = try? Data(contentsOf: URL(fileURLWithPath: directory + "/" + GuestSnapshotInfo.file))
        guard let data, let info = try? JSONDecoder().decode(GuestSnapshotInfo.self, from: data) else {
            throw VouchError(.bootFailed, "the snapshot in \(directory) is incomplete (no readable \(GuestSnapshotInfo.file))", machine: name)
        }
        if backend == nil { backend = try makeBackend(context) }
        guard let backend = backend as? any SnapshottingBackend else {
            throw VouchError(.unsupported, "the \(backend?.kind ?? "unknown") backend cannot restore snapshots", machine: name)
        }
        await shell?.markLost("the machine was restored from a snapshot")
        shell = nil
        booted = false
        let channel = try await backend.restoreSnapshot(from: directory)
        return (backend, channel, info)
    }

    /// Reattaches the shell to the resumed guest, sets its clock (it stopped
    /// at snapshot time) and remounts what the snapshot took down.
    func finishRestore(_ channel: GuestChannel, info: GuestSnapshotInfo) async throws {
        let shell = GuestShell(machine: name, channel: channel)
        do {
            try await withDeadline(seconds: min(bootTimeout, 60)) { try await shell.resume() }
        } catch is DeadlineExceeded {
            channel.close()
            throw VouchError(.bootFailed, "the restored guest's shell did not answer within \(formatSeconds(min(bootTimeout, 60)))",
                             machine: name, outputTail: console.tail(lines: 20))
        }
        self.shell = shell
        booted = true
        log.debug("restored guest shell answers", machine: name)
        // One command for the clock and the mounts: every exec in a freshly
        // restored TCG guest is slow (its translated code is gone).
        let now = Int(Date().timeIntervalSince1970)
        var command = "date -u -s @\(now) >/dev/null || echo 'cannot set the clock' >&2"
        for mount in info.mounts { command += "; " + Self.mountCommand(mount) }
        let result = try await execute(command)
        if result.status != 0 { log.warning("after restoring: '\(command)' failed (\(result.status)): \(result.text)", machine: name) }
        log.debug("restored guest clock set and shares mounted", machine: name)
    }

    private static func mountCommand(_ mount: [String]) -> String {
        "mount -t 9p -o trans=virtio,version=9p2000.L,msize=131072 \(shellQuote(mount[0])) \(shellQuote(mount[1]))"
    }

    /// Mounts 9p shares again; a failure is logged, not thrown, because the
    /// guest is otherwise fine.
    private func remount(_ mounts: [[String]]) async {
        for mount in mounts {
            let command = Self.mountCommand(mount)
            let result = try? await execute(command)
            if result?.status != 0 {
                log.warning("cannot remount \(mount[1]) after the snapshot: \(result?.text ?? "no answer")", machine: name)
            }
        }
    }

    // MARK: - Named snapshot directories

    private func snapshotsRoot() throws -> String {
        let root = context.stateDirectory + "/snapshots"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        return root
    }

    /// The symlink naming a snapshot. Snapshots themselves live in unique
    /// directories because a later snapshot's disk may use an earlier one's
    /// as its backing file: replacing a name never deletes data in use.
    private func snapshotLink(_ name: String) throws -> String {
        guard !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }), !name.hasPrefix(".") else {
            throw VouchError(.other, "invalid snapshot name '\(name)' (use letters, digits, '.', '_' and '-')", machine: self.name)
        }
        return try snapshotsRoot() + "/" + name
    }

    /// Gives `directory` (from `writeSnapshot`) the name `name`.
    func publishSnapshot(_ directory: String, as name: String) throws {
        try publish(directory, as: try snapshotLink(name))
    }

    /// The directory of the snapshot called `name`.
    /// - Throws: `VouchError.other` if there is none.
    func namedSnapshotDirectory(_ name: String) throws -> String {
        try snapshotDirectory(name)
    }

    private func snapshotDirectory(_ name: String) throws -> String {
        let link = try snapshotLink(name)
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: link) else {
            throw VouchError(.other, "there is no snapshot named '\(name)'", machine: self.name)
        }
        return target.hasPrefix("/") ? target : (link as NSString).deletingLastPathComponent + "/" + target
    }

    private func publish(_ directory: String, as link: String) throws {
        let temporary = link + ".new"
        try? FileManager.default.removeItem(atPath: temporary)
        try FileManager.default.createSymbolicLink(atPath: temporary, withDestinationPath: (directory as NSString).lastPathComponent)
        guard rename(temporary, link) == 0 else {
            throw VouchError(.other, "cannot name the snapshot: \(SystemError("rename"))", machine: name)
        }
    }
}

/// A new directory only the owner can enter, inside `parent`.
func makePrivateDirectory(in parent: String, prefix: String = "snap-") throws -> String {
    var template = Array("\(parent)/\(prefix)XXXXXX".utf8CString)
    guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
        throw VouchError(.other, "cannot create a snapshot directory in \(parent): \(SystemError("mkdtemp"))")
    }
    return String(cString: made)
}
