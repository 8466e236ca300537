import Foundation
import VouchSupport

extension Driver {
    /// Snapshots every machine as `name`, consistently: all guests are paused
    /// before the first is saved and resumed only after the last, so no
    /// machine sees another run ahead (packets in flight between paused
    /// guests are simply delivered after the resume, or retransmitted).
    /// Boots machines that are not up yet.
    /// - Throws: the first machine's error; every guest is resumed either way.
    public func snapshotAll(_ name: String) async throws(VouchError) {
        try await startAll()
        try await log.nested("snapshot all VMs as '\(name)'") { () throws(VouchError) in
            let begun = await eachMachine { m throws(VouchError) in try await m.beginSnapshot() }
            let sessions = begun.compactMap { try? $0.get() }
            var failure = begun.lazy.compactMap { r -> VouchError? in
                if case .failure(let e) = r { return e } else { return nil }
            }.first
            if failure == nil {
                do throws(VouchError) {
                    _ = try await eachSession(sessions) { s throws(VouchError) in try await s.backend.pause() }
                    let saved = try await eachSession(sessions) { s throws(VouchError) in (s, try await s.machine.writeSnapshot(s, into: nil)) }
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
    public func restoreAll(_ name: String) async throws(VouchError) {
        try await log.nested("restore all VMs from '\(name)'") { () throws(VouchError) in
            let results = await eachMachine { m throws(VouchError) in
                try await m.beginRestore(from: try await m.snapshotDirectory(name))
            }
            let loaded = results.compactMap { try? $0.get() }
            for r in results {
                if case .failure(let error) = r {
                    for l in loaded { l.channel?.close() }
                    throw error
                }
            }
            do throws(VouchError) {
                _ = try await eachSession(loaded) { l throws(VouchError) in try await l.backend.resume() }
            } catch {
                for l in loaded { l.channel?.close() }
                throw error
            }
            _ = try await eachSession(loaded) { l throws(VouchError) in try await l.machine.finishRestore(l) }
        }
    }

    /// Runs `body` on every machine concurrently; all finish, failed or not,
    /// so the caller can undo what the others did.
    private func eachMachine<T: Sendable>(_ body: @escaping @Sendable (Machine) async throws(VouchError) -> T) async -> [Result<T, VouchError>] {
        await withTaskGroup(of: Result<T, VouchError>.self) { group in
            for m in machines {
                group.addTask {
                    do throws(VouchError) { return .success(try await body(m)) } catch { return .failure(error) }
                }
            }
            var results: [Result<T, VouchError>] = []
            for await r in group { results.append(r) }
            return results
        }
    }

    /// Runs `body` for every item concurrently.
    /// - Throws: the first error, once all have finished.
    private func eachSession<S: Sendable, T: Sendable>(_ items: [S], _ body: @escaping @Sendable (S) async throws(VouchError) -> T) async throws(VouchError) -> [T] {
        let results = await withTaskGroup(of: Result<T, VouchError>.self) { group in
            for item in items {
                group.addTask {
                    do throws(VouchError) { return .success(try await body(item)) } catch { return .failure(error) }
                }
            }
            var results: [Result<T, VouchError>] = []
            for await r in group { results.append(r) }
            return results
        }
        return try results.map { r throws(VouchError) in try r.get() }
    }
}
