import Foundation

extension Driver {
    /// Snapshots every machine as `name`, consistently: all guests are paused
    /// before the first is saved and resumed only after the last, so no
    /// machine sees another run ahead (packets in flight between paused
    /// guests are simply delivered after the resume, or retransmitted).
    /// Boots machines that are not up yet.
    /// - Throws: the first machine's error; every guest is resumed either way.
    public func snapshotAll(_ name: String) async throws {
        try await startAll()
        try await log.nested("snapshot all VMs as '\(name)'") {
            let begun = await eachMachine { try await $0.beginSnapshot() }
            let sessions = begun.compactMap { try? $0.get() }
            var failure: (any Error)? = begun.lazy.compactMap { r -> (any Error)? in
                if case .failure(let e) = r { return e } else { return nil }
            }.first
            if failure == nil {
                do {
                    _ = try await eachSession(sessions) { try await $0.backend.pause() }
                    let saved = try await eachSession(sessions) { s in (s, try await s.machine.writeSnapshot(s, into: nil)) }
                    for (session, directory) in saved { try await session.machine.publishSnapshot(directory, as: name) }
                } catch {
                    failure = error
                }
            }
            await withTaskGroup(of: Void.self) { group in
                for s in sessions { group.addTask { await s.machine.endSnapshot(s) } }
            }
            if let failure { throw failure }
        }
    }

    /// Restores every machine from `snapshotAll(name)`: all are loaded
    /// paused, then resumed together, so their clocks and network state
    /// agree. Each machine's NICs join this run's switches again.
    /// - Throws: the first machine's error (that machine is then down).
    public func restoreAll(_ name: String) async throws {
        try await log.nested("restore all VMs from '\(name)'") {
            let results = await eachMachine { m in
                let (backend, channel, info) = try await m.beginRestore(from: try await m.namedSnapshotDirectory(name))
                return RestoredMachine(machine: m, backend: backend, channel: channel, info: info)
            }
            let loaded = results.compactMap { try? $0.get() }
            for r in results {
                if case .failure(let error) = r {
                    for l in loaded { l.channel.close() }
                    throw error
                }
            }
            do {
                _ = try await eachSession(loaded) { try await $0.backend.resume() }
            } catch {
                for l in loaded { l.channel.close() }
                throw error
            }
            _ = try await eachSession(loaded) { try await $0.machine.finishRestore($0.channel, info: $0.info) }
        }
    }

    /// Runs `body` on every machine concurrently; all finish, failed or not,
    /// so the caller can undo what the others did.
    private func eachMachine<T: Sendable>(_ body: @escaping @Sendable (Machine) async throws -> T) async -> [Result<T, any Error>] {
        await withTaskGroup(of: Result<T, any Error>.self) { group in
            for m in machines {
                group.addTask {
                    do { return .success(try await body(m)) } catch { return .failure(error) }
                }
            }
            var results: [Result<T, any Error>] = []
            for await r in group { results.append(r) }
            return results
        }
    }

    private func eachSession<S: Sendable, T: Sendable>(_ items: [S], _ body: @escaping @Sendable (S) async throws -> T) async throws -> [T] {
        try await withThrowingTaskGroup(of: T.self) { group in
            for item in items { group.addTask { try await body(item) } }
            var results: [T] = []
            for try await r in group { results.append(r) }
            return results
        }
    }
}

/// A machine loaded from a snapshot, paused, waiting for the others.
struct RestoredMachine: Sendable {
    let machine: Machine
    let backend: any SnapshottingBackend
    let channel: GuestChannel
    let info: GuestSnapshotInfo
}
