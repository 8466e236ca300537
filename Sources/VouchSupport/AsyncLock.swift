import Synchronization

/// A lock for tasks: waiters queue in order, and each wait can time out or
/// be cancelled without disturbing the others. Used where holding a
/// resource spans suspension points (the guest shell between send and answer).
package final class AsyncLock: Sendable {
    private struct State {
        var held = false
        var queue: [(id: UInt64, c: CheckedContinuation<Bool, Never>)] = []
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())

    package init() {}

    /// Takes the lock, waiting until `deadline` if given.
    /// - Returns: false if the deadline passed first.
    /// - Throws: `.cancelled` if the task was cancelled while waiting.
    package func acquire(until deadline: Deadline? = nil) async throws(VouchError) -> Bool {
        let id = state.withLock { s -> UInt64? in
            if !s.held {
                s.held = true
                return nil
            }
            s.nextID += 1
            return s.nextID
        }
        guard let id else { return true }
        let alarm = deadline.map { Alarm.schedule(at: $0) { [self] in giveUp(id) } }
        defer { alarm?.cancel() }
        let got = await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
                let now = state.withLock { s -> Bool? in
                    if Task.isCancelled || deadline?.hasPassed == true { return false }
                    s.queue.append((id, c))
                    return nil
                }
                if let now { c.resume(returning: now) }
            }
        } onCancel: {
            giveUp(id)
        }
        if !got, Task.isCancelled { throw VouchError.cancelled() }
        return got
    }

    /// Hands the lock to the next waiter, or frees it.
    package func release() {
        let next = state.withLock { s -> CheckedContinuation<Bool, Never>? in
            guard !s.queue.isEmpty else {
                s.held = false
                return nil
            }
            return s.queue.removeFirst().c
        }
        next?.resume(returning: true)
    }

    private func giveUp(_ id: UInt64) {
        let waiter = state.withLock { s -> CheckedContinuation<Bool, Never>? in
            guard let i = s.queue.firstIndex(where: { $0.id == id }) else { return nil }
            return s.queue.remove(at: i).c
        }
        waiter?.resume(returning: false)
    }
}
