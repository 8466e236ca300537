import Foundation
import Glibc
import VouchBackends
import VouchGuest
import VouchSupport

/// A machine being snapshotted: prepared, shell held, ready to pause.
struct SnapshotSession: Sendable {
    let machine: Machine
    let backend: any Snapshotting
    let shell: GuestShell
}

/// A machine loaded from a snapshot, paused, waiting for the others.
struct RestoredMachine: Sendable {
    let machine: Machine
    let backend: any Snapshotting
    /// Nil when the backend opens a new shell after the resume.
    let channel: GuestChannel?
    let directory: String
}

extension Machine {
    /// Saves the running machine (memory, devices, disk) as `name`, replacing
    /// an earlier snapshot of that name. Boots the machine first if needed.
    /// The guest is paused only while its state is written; it then goes on.
    /// - Throws: `.unsupported` for backends without snapshots, or what went
    ///   wrong while saving (the guest keeps running).
    public func snapshot(_ name: String) async throws(VouchError) {
        let final = try snapshotLink(name)
        let began = ContinuousClock.now
        let session = try await beginSnapshot()
        let directory: String
        do throws(VouchError) {
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
    /// - Throws: `.other` if there is no such snapshot, `.bootFailed` if it
    ///   cannot be loaded (the machine is then down).
    public func restore(_ name: String) async throws(VouchError) {
        let began = ContinuousClock.now
        let restored = try await beginRestore(from: try snapshotDirectory(name))
        do { try await restored.backend.resume() } catch {
            restored.channel?.close()
            throw error
        }
        try await finishRestore(restored)
        log.log(String(format: "restored snapshot '\(name)' (%.3f s)", (ContinuousClock.now - began).seconds), machine: self.name)
    }

    // MARK: - Steps, shared with Driver.snapshotAll / restoreAll and the boot cache

    /// Lets the backend prepare the guest, then holds the shell, so no
    /// command is in flight while the guest is saved.
    func beginSnapshot() async throws(VouchError) -> SnapshotSession {
        try await start()
        let backend = try capability(Snapshotting.self, .snapshots, for: "snapshot")
        guard let shell else { throw VouchError(.machineDown, "the machine is not running", machine: name) }
        try await backend.prepareSnapshot(shell)
        do {
            try await shell.acquire(until: Deadline(seconds: 60))
        } catch {
            await runAfterResume(backend.commandsAfterResume(restoredFrom: nil))
            throw error
        }
        return SnapshotSession(machine: self, backend: backend, shell: shell)
    }

    /// Saves the paused guest into a new directory (next to the named
    /// snapshots, or inside `parent`) and returns it.
    func writeSnapshot(_ session: SnapshotSession, into parent: String?) async throws(VouchError) -> String {
        let root: String
        if let parent { root = parent } else { root = try snapshotsRoot() }
        let directory = try makePrivateDirectory(in: root)
        do throws(VouchError) {
            try await session.backend.saveSnapshot(to: directory)
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
        return directory
    }

    /// Lets the guest run again after a snapshot and undoes the preparation.
    func endSnapshot(_ session: SnapshotSession) async {
        do { try await session.backend.resume() } catch { log.warning("cannot resume after the snapshot: \(error)", machine: name) }
        await session.shell.release()
        await runAfterResume(session.backend.commandsAfterResume(restoredFrom: nil))
    }

    /// Replaces the running guest by the one in `directory`, left paused.
    func beginRestore(from directory: String) async throws(VouchError) -> RestoredMachine {
        if backend == nil { backend = makeBackend(context) }
        let snapshotting = try capability(Snapshotting.self, .snapshots, for: "restore")
        await shell?.markLost("the machine was restored from a snapshot")
        shell = nil
        booted = false
        context.health.reset()
        let channel = try await snapshotting.restoreSnapshot(from: directory)
        return RestoredMachine(machine: self, backend: snapshotting, channel: channel, directory: directory)
    }

    /// Reattaches the shell to the resumed guest, sets its clock (it stopped
    /// at snapshot time) and undoes what the snapshot's preparation took down.
    func finishRestore(_ restored: RestoredMachine) async throws(VouchError) {
        let wait = min(bootTimeout, 60)
        let shell: GuestShell
        if let channel = restored.channel {
            shell = GuestShell(machine: name, channel: channel)
            do {
                try await shell.resume(until: Deadline(seconds: wait))
            } catch where error.kind == .timeout {
                channel.close()
                throw VouchError(.bootFailed, "the restored guest's shell did not answer within \(formatSeconds(wait))",
                                 machine: name, outputTail: console.tail(lines: 20))
            }
        } else {
            // The restore reset the shell's connection; the shell itself runs on.
            let deadline = Deadline(seconds: wait)
            let channel = try await restored.backend.shellAfterRestore(until: deadline)
            shell = GuestShell(machine: name, channel: channel)
            do {
                try await shell.resume(until: deadline)
            } catch where error.kind == .timeout {
                channel.close()
                throw VouchError(.bootFailed, "the restored guest's shell did not answer within \(formatSeconds(wait))",
                                 machine: name, outputTail: console.tail(lines: 20))
            }
        }
        self.shell = shell
        booted = true
        resetsSeen = context.health.guestResets
        log.debug("restored guest shell answers", machine: name)
        // One command for the clock and the backend's steps: every exec in a
        // freshly restored TCG guest is slow (its translated code is gone).
        let now = Int(Date().timeIntervalSince1970)
        await runAfterResume(["date -u -s @\(now) >/dev/null || echo 'cannot set the clock' >&2"]
                             + restored.backend.commandsAfterResume(restoredFrom: restored.directory))
        log.debug("restored guest clock set and shares mounted", machine: name)
    }

    /// Runs the commands after a resume in one go; a failure is logged, not
    /// thrown, because the guest is otherwise fine.
    private func runAfterResume(_ commands: [String]) async {
        guard !commands.isEmpty else { return }
        let command = commands.joined(separator: "; ")
        do {
            let result = try await execute(command, timeout: 60)
            if result.status != 0 { log.warning("after the snapshot: '\(command)' failed (\(result.status)): \(result.text)", machine: name) }
        } catch {
            log.warning("after the snapshot: '\(command)' failed: \(error)", machine: name)
        }
    }

    // MARK: - Named snapshot directories

    private func snapshotsRoot() throws(VouchError) -> String {
        let root = context.stateDirectory + "/snapshots"
        try vouching("cannot create \(root)", machine: name) {
            try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        return root
    }

    /// The symlink naming a snapshot. Snapshots themselves live in unique
    /// directories because a later snapshot's disk may use an earlier one's
    /// as its backing file: replacing a name never deletes data in use.
    private func snapshotLink(_ name: String) throws(VouchError) -> String {
        guard !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }), !name.hasPrefix(".") else {
            throw VouchError(.invalidSpec, "invalid snapshot name '\(name)' (use ASCII letters, digits, '.', '_' and '-')", machine: self.name)
        }
        return try snapshotsRoot() + "/" + name
    }

    /// Gives `directory` (from `writeSnapshot`) the name `name`.
    func publishSnapshot(_ directory: String, as name: String) throws(VouchError) {
        try publish(directory, as: try snapshotLink(name))
    }

    /// The directory of the snapshot called `name`.
    /// - Throws: `.other` if there is none.
    func snapshotDirectory(_ name: String) throws(VouchError) -> String {
        let link = try snapshotLink(name)
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: link) else {
            throw VouchError(.other, "there is no snapshot named '\(name)'", machine: self.name)
        }
        return target.hasPrefix("/") ? target : (link as NSString).deletingLastPathComponent + "/" + target
    }

    private func publish(_ directory: String, as link: String) throws(VouchError) {
        let temporary = link + ".new"
        try? FileManager.default.removeItem(atPath: temporary)
        try vouching("cannot name the snapshot", machine: name) {
            try FileManager.default.createSymbolicLink(atPath: temporary, withDestinationPath: (directory as NSString).lastPathComponent)
        }
        guard rename(temporary, link) == 0 else {
            throw VouchError(.other, "cannot name the snapshot", machine: name, cause: SystemCallError("rename \(temporary)"))
        }
    }
}
