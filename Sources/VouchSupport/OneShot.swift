import Synchronization

/// A value set once, which any number of tasks can wait for, each with its
/// own deadline. Waiting is cancellable.
package final class OneShot<Value: Sendable>: Sendable {
    /// How a wait ended.
    package enum Wait {
        case value(Value)
        case timedOut
        case cancelled
    }

    private struct State {
        var value: Value?
        var waiters: [UInt64: CheckedContinuation<Wait, Never>] = [:]
        /// Outcomes (timeout, cancellation) that came before their waiter registered.
        var early: [UInt64: Wait] = [:]
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())

    package init() {}

    /// The value, or nil while unset.
    package var value: Value? { state.withLock { $0.value } }

    /// Sets the value (only the first call counts) and wakes every waiter.
    package func set(_ value: Value) {
        let waiters = state.withLock { s -> [CheckedContinuation<Wait, Never>] in
            guard s.value == nil else { return [] }
            s.value = value
            defer { s.waiters.removeAll() }
            return Array(s.waiters.values)
        }
        waiters.forEach { $0.resume(returning: .value(value)) }
    }

    /// Waits for the value, until `deadline` if given. With
    /// `ignoringCancellation`, a cancelled task waits all the same (teardown).
    package func wait(until deadline: Deadline? = nil, ignoringCancellation: Bool = false) async -> Wait {
        if let value { return .value(value) }
        let id = state.withLock { s -> UInt64 in s.nextID += 1; return s.nextID }
        let alarm = deadline.map { Alarm.schedule(at: $0) { [self] in resume(id, with: .timedOut) } }
        defer {
            alarm?.cancel()
            _ = state.withLock { $0.early.removeValue(forKey: id) }
        }
        let wait = { @Sendable in
            await withCheckedContinuation { (c: CheckedContinuation<Wait, Never>) in
                let now = self.state.withLock { s -> Wait? in
                    if let v = s.value { return .value(v) }
                    if let early = s.early.removeValue(forKey: id) { return early }
                    if !ignoringCancellation, Task.isCancelled { return .cancelled }
                    s.waiters[id] = c
                    return nil
                }
                if let now { c.resume(returning: now) }
            }
        }
        if ignoringCancellation { return await wait() }
        return await withTaskCancellationHandler(operation: wait) { self.resume(id, with: .cancelled) }
    }

    private func resume(_ id: UInt64, with outcome: Wait) {
        let waiter = state.withLock { s -> CheckedContinuation<Wait, Never>? in
            if let c = s.waiters.removeValue(forKey: id) { return c }
            if s.value == nil { s.early[id] = outcome }
            return nil
        }
        waiter?.resume(returning: outcome)
    }
}
