import Foundation

extension Machine {
    /// Brings the machine up from its cached boot snapshot if there is a
    /// good one. Returns false for a cold boot, with the reason logged; after
    /// a failed restore `backend` is a fresh one, ready to boot.
    /// - Throws: only if no fresh backend can be made.
    func bootFromSnapshot(_ cache: SnapshotCache, began: ContinuousClock.Instant) async throws -> Bool {
        guard let snapshotting = backend as? any SnapshottingBackend else {
            log.warning("boot snapshot: the \(backend?.kind ?? "unknown") backend cannot snapshot; cold boot", machine: name)
            return false
        }
        let key: String
        do {
            key = try await snapshotting.snapshotKey()
        } catch {
            log.warning("boot snapshot: \(error); cold boot", machine: name)
            return false
        }
        let directory: String
        switch cache.lookup(key: key, machine: name) {
        case .miss(let reason):
            log.log("boot snapshot: \(reason); cold boot", machine: name)
            return false
        case .hit(let found):
            directory = found
        }
        do {
            let (restored, channel, info) = try await beginRestore(from: directory)
            do { try await restored.resume() } catch { channel.close(); throw error }
            try await finishRestore(channel, info: info)
        } catch {
            log.warning("boot snapshot: cannot restore \(directory) (\(error)); removed it, falling back to a cold boot", machine: name)
            cache.discard(directory)
            await backend?.stop(keepState: false)
            shell = nil
            booted = false
            backend = try makeBackend(context)
            return false
        }
        let seconds = (ContinuousClock.now - began).seconds
        lastBootSeconds = seconds
        log.log(String(format: "restored from the boot snapshot %@ instead of booting (%.2f s after start)", directory, seconds), machine: name)
        return true
    }

    /// After a cold boot: waits until the guest is ready (its ready unit,
    /// e.g. multi-user.target), snapshots it into the cache and lets it run
    /// on. A failure is logged: the test goes on without a cached snapshot.
    func storeBootSnapshot(_ cache: SnapshotCache) async {
        guard let snapshotting = backend as? any SnapshottingBackend else { return }
        do {
            let key = try await snapshotting.snapshotKey()
            if let readyUnit { try await waitForUnit(readyUnit, timeout: bootTimeout) }
            let began = ContinuousClock.now
            let session = try await beginSnapshot()
            let directory: String
            do {
                try await session.backend.pause()
                directory = try await cache.store(key: key, machine: name) { try await self.writeSnapshot(session, to: $0) }
            } catch {
                await endSnapshot(session)
                throw error
            }
            await endSnapshot(session)
            log.log(String(format: "saved the boot snapshot %@ (%.2f s); later runs restore it", directory, (ContinuousClock.now - began).seconds),
                    machine: name)
        } catch {
            log.warning("boot snapshot: could not save one (\(error)); the next run boots cold again", machine: name)
        }
    }
}
