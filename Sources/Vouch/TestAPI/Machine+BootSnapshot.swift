import Foundation
import VouchBackends
import VouchSupport

extension Machine {
    /// Brings the machine up from its cached boot snapshot if there is a
    /// good one. Returns false for a cold boot, with the reason logged; after
    /// a failed restore `backend` is a fresh one, ready to boot.
    func bootFromSnapshot(_ cache: SnapshotCache, began: ContinuousClock.Instant) async throws(VouchError) -> Bool {
        guard let snapshotting = backend as? any Snapshotting else {
            log.warning("boot snapshot: the \(backendName) backend cannot snapshot; cold boot", machine: name)
            return false
        }
        let key: String
        do {
            key = try await snapshotting.snapshotKey()
        } catch {
            log.warning("boot snapshot: \(error.message); cold boot", machine: name)
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
        do throws(VouchError) {
            let restored = try await beginRestore(from: directory)
            do { try await restored.backend.resume() } catch {
                restored.channel?.close()
                throw error
            }
            try await finishRestore(restored)
        } catch where error.kind == .cancelled {
            throw error
        } catch {
            log.warning("boot snapshot: cannot restore \(directory) (\(error)); removed it, falling back to a cold boot", machine: name)
            cache.discard(directory)
            await backend?.stop(keepState: false)
            shell = nil
            booted = false
            backend = makeBackend(context)
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
        guard let snapshotting = backend as? any Snapshotting else { return }
        do throws(VouchError) {
            let key = try await snapshotting.snapshotKey()
            if let readyUnit { try await waitForUnit(readyUnit, timeout: bootTimeout) }
            let began = ContinuousClock.now
            let session = try await beginSnapshot()
            let directory: String
            do throws(VouchError) {
                try await session.backend.pause()
                directory = try await cache.store(key: key, machine: name) { path throws(VouchError) in
                    try await session.backend.saveSnapshot(to: path)
                }
            } catch {
                await endSnapshot(session)
                throw error
            }
            await endSnapshot(session)
            log.log(String(format: "saved the boot snapshot %@ (%.2f s); later runs restore it", directory, (ContinuousClock.now - began).seconds),
                    machine: name)
        } catch where error.kind == .cancelled {
            log.debug("boot snapshot not saved: cancelled", machine: name)
        } catch {
            log.warning("boot snapshot: could not save one (\(error)); the next run boots cold again", machine: name)
        }
    }
}
