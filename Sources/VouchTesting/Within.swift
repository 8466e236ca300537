/// Thrown by `within` when the time runs out.
package struct TestTimedOut: Error, CustomStringConvertible {
    package let seconds: Double
    package var description: String { "timed out after \(seconds) s" }
}

/// Runs `body`, failing with `TestTimedOut` after `seconds` (the body is
/// cancelled): a test's own bound, so a bug under test fails it instead of
/// hanging the suite.
package func within<T: Sendable>(seconds: Double, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: .seconds(seconds))
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else { throw TestTimedOut(seconds: seconds) }
        return value
    }
}
