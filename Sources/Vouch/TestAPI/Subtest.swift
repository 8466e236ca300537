import Foundation
import VouchSupport

/// Runs `body` as a named, timed section: nested in the log and one test
/// case in the JUnit report (failed if `body` throws).
/// - Throws: what `body` throws, as a `VouchError` (another error is kept as its cause).
@discardableResult
public func subtest<T>(
    _ name: String, file: String = #filePath, line: Int = #line, _ body: () async throws -> T
) async throws(VouchError) -> T {
    let driver = Driver.current
    let log = driver?.log ?? TestLog(quiet: false)
    let began = ContinuousClock.now
    do {
        let result = try await log.nested("subtest: \(name)") { () throws(VouchError) in
            do {
                return try await body()
            } catch let error as VouchError {
                throw error
            } catch {
                throw VouchError.from(error, "subtest \(name) failed").at(.init(file: file, line: line))
            }
        }
        driver?.junit.record(name, seconds: (ContinuousClock.now - began).seconds, failure: nil)
        return result
    } catch {
        driver?.junit.record(name, seconds: (ContinuousClock.now - began).seconds, failure: "\(error)")
        throw error
    }
}

/// Boots every machine of the current test concurrently.
/// - Throws: the first boot error.
public func startAll() async throws(VouchError) {
    guard let driver = Driver.current else { throw VouchError(.other, "startAll() called outside a test run") }
    try await driver.startAll()
}

/// Calls `body` up to `attempts` times, `delay` seconds apart, until it does not throw.
/// - Throws: the last attempt's error, as a `VouchError`; `.cancelled` at once.
@discardableResult
public func retry<T>(attempts: Int = 10, delay seconds: Double = 1, _ body: () async throws -> T) async throws(VouchError) -> T {
    guard attempts >= 1 else { throw VouchError(.invalidSpec, "retry needs at least one attempt (got \(attempts))") }
    var attempt = 1
    while true {
        do { return try await body() } catch {
            let last = VouchError.from(error, "attempt \(attempt) failed")
            if attempt >= attempts || last.kind == .cancelled { throw last }
            Driver.current?.log.log("attempt \(attempt)/\(attempts) failed, retrying in \(formatSeconds(seconds)): \(firstLine(error))")
            attempt += 1
            try await delay(seconds)
        }
    }
}

/// Calls `body` until it does not throw, for at most `timeout` seconds.
/// - Throws: `.timeout` carrying the last error as its cause.
@discardableResult
public func retry<T>(timeout: Double, file: String = #filePath, line: Int = #line, _ body: () async throws -> T) async throws(VouchError) -> T {
    let deadline = Deadline(seconds: timeout)
    var pause = 0.1
    while true {
        do { return try await body() } catch {
            let last = VouchError.from(error, "the attempt failed")
            if last.kind == .cancelled { throw last }
            if deadline.hasPassed {
                throw VouchError(.timeout, "retry gave up after \(formatSeconds(timeout)); last error: \(firstLine(error))",
                                 location: .init(file: file, line: line), cause: last)
            }
            try await delay(min(pause, max(0.01, deadline.remaining)))
            pause = min(pause * 2, 1)
        }
    }
}

/// Runs `body` for every machine concurrently and waits for all.
/// - Throws: the first error (the other calls are cancelled).
public func waitAll(_ machines: [Machine], _ body: @escaping @Sendable (Machine) async throws -> Void) async throws(VouchError) {
    do {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for m in machines { group.addTask { try await body(m) } }
            try await group.waitForAll()
        }
    } catch {
        throw VouchError.from(error, "waitAll failed")
    }
}

/// Fails unless `text` contains `part`.
/// - Throws: `VouchError.assertionFailed` showing both.
public func assertContains(_ text: String, _ part: String, file: String = #filePath, line: Int = #line) throws(VouchError) {
    guard text.contains(part) else {
        throw VouchError(.assertionFailed, "expected the text to contain \"\(part)\"", outputTail: tail(text),
                         location: .init(file: file, line: line))
    }
}

/// Fails unless `text` matches the regular expression `pattern` somewhere.
/// - Throws: `VouchError.assertionFailed`, or `.invalidSpec` for a bad pattern.
public func assertMatches(_ text: String, _ pattern: String, file: String = #filePath, line: Int = #line) throws(VouchError) {
    let regex: Regex<AnyRegexOutput>
    do { regex = try Regex(pattern) } catch {
        throw VouchError(.invalidSpec, "invalid regular expression \(pattern)", location: .init(file: file, line: line), cause: SendableError(error))
    }
    guard text.contains(regex) else {
        throw VouchError(.assertionFailed, "expected the text to match /\(pattern)/", outputTail: tail(text),
                         location: .init(file: file, line: line))
    }
}

/// Fails unless `actual == expected`.
/// - Throws: `VouchError.assertionFailed` showing both values.
public func assertEqual<T: Equatable>(_ actual: T, _ expected: T, file: String = #filePath, line: Int = #line) throws(VouchError) {
    guard actual == expected else {
        throw VouchError(.assertionFailed, "expected \(expected), got \(actual)", location: .init(file: file, line: line))
    }
}

/// Fails unless `condition` holds.
/// - Throws: `VouchError.assertionFailed` with `message`.
public func assertTrue(_ condition: Bool, _ message: String = "assertion failed", file: String = #filePath, line: Int = #line) throws(VouchError) {
    guard condition else { throw VouchError(.assertionFailed, message, location: .init(file: file, line: line)) }
}

/// Fails if `condition` holds.
/// - Throws: `VouchError.assertionFailed` with `message`.
public func assertFalse(_ condition: Bool, _ message: String = "expected false", file: String = #filePath, line: Int = #line) throws(VouchError) {
    guard !condition else { throw VouchError(.assertionFailed, message, location: .init(file: file, line: line)) }
}

/// Fails if `actual` equals `unexpected`.
/// - Throws: `VouchError.assertionFailed` naming the value.
public func assertNotEqual<T: Equatable>(_ actual: T, _ unexpected: T, file: String = #filePath, line: Int = #line) throws(VouchError) {
    guard actual != unexpected else {
        throw VouchError(.assertionFailed, "expected anything but \(unexpected)", location: .init(file: file, line: line))
    }
}

/// Fails unless `body` throws; returns the error for further checks (as a
/// `VouchError`; another error is its cause).
/// - Throws: `.assertionFailed` if `body` returns normally.
@discardableResult
public func assertThrows<T>(file: String = #filePath, line: Int = #line, _ body: () async throws -> T) async throws(VouchError) -> VouchError {
    let value: T
    do {
        value = try await body()
    } catch {
        return VouchError.from(error, "the call threw")
    }
    throw VouchError(.assertionFailed, "expected an error, got \(value)", location: .init(file: file, line: line))
}
