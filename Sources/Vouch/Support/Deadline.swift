/// Thrown by `withDeadline` when the time runs out.
struct DeadlineExceeded: Error {
    let seconds: Double
}

/// Runs `body`, cancelling it and throwing `DeadlineExceeded` after `seconds`.
///
/// `body` must react to cancellation (every wait in Vouch does), since the
/// deadline cannot return before `body` has actually stopped.
func withDeadline<T: Sendable>(
    seconds: Double,
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: .seconds(seconds))
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw DeadlineExceeded(seconds: seconds)
        }
        return value
    }
}
