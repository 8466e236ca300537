/// A moment by which something must be done.
package struct Deadline: Sendable, Comparable {
    /// The moment itself.
    package let instant: ContinuousClock.Instant

    /// `seconds` from now.
    package init(seconds: Double) {
        instant = ContinuousClock.now.advanced(by: .seconds(max(0, seconds)))
    }

    package init(_ instant: ContinuousClock.Instant) {
        self.instant = instant
    }

    /// Seconds left (never negative).
    package var remaining: Double { max(0, (instant - ContinuousClock.now).seconds) }

    /// Whether the moment has come.
    package var hasPassed: Bool { ContinuousClock.now >= instant }

    /// The earlier of this deadline and one `seconds` from now.
    package func capped(at seconds: Double) -> Deadline { min(self, Deadline(seconds: seconds)) }

    package static func < (a: Deadline, b: Deadline) -> Bool { a.instant < b.instant }
}

/// Runs `body` under a deadline of `seconds`; returns nil if the time ran out.
///
/// At the deadline `body` is cancelled. If it still returns a value within
/// `grace` seconds (it was finishing just then), that value is returned.
/// If it does not end within `grace`, it is left to end on its own, already
/// cancelled, and nil is returned: the caller's deadline holds even over code
/// that is slow to notice cancellation, such as a wait on a frozen VMM.
/// - Throws: what `body` throws before the deadline; `.cancelled` if the
///   calling task is cancelled (after giving `body` the same grace).
package func withDeadline<T: Sendable>(
    seconds: Double, grace: Double = 1,
    _ body: @escaping @Sendable () async throws(VouchError) -> T
) async throws(VouchError) -> T? {
    let done = OneShot<Result<T, VouchError>>()
    let worker = Task {
        do throws(VouchError) { done.set(.success(try await body())) } catch { done.set(.failure(error)) }
    }
    switch await done.wait(until: Deadline(seconds: seconds)) {
    case .value(let result):
        return try result.get()
    case .timedOut:
        worker.cancel()
        if case .value(.success(let value)) = await done.wait(until: Deadline(seconds: grace), ignoringCancellation: true) {
            return value
        }
        return nil
    case .cancelled:
        worker.cancel()
        _ = await done.wait(until: Deadline(seconds: grace), ignoringCancellation: true)
        throw VouchError.cancelled()
    }
}

/// Sleeps `seconds`.
/// - Throws: `.cancelled` when the task is cancelled.
package func delay(_ seconds: Double) async throws(VouchError) {
    do { try await Task.sleep(for: .seconds(seconds)) } catch { throw VouchError.cancelled() }
}
