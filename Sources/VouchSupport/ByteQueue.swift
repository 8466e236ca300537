import Synchronization

/// A one-consumer queue of byte chunks fed by a reader thread.
///
/// Waiting for data can be cancelled, or given a deadline, without losing
/// anything: bytes stay queued until `next` returns them. That is what lets
/// a guest shell keep its framing intact when a command's deadline expires.
package final class ByteQueue: Sendable {
    /// What `next` found.
    package enum Next: Equatable {
        /// Every byte queued so far (at least one).
        case bytes([UInt8])
        /// The stream ended cleanly and everything was taken.
        case end
        /// The deadline passed with nothing queued.
        case timedOut
    }

    private struct State {
        var chunks: [[UInt8]] = []
        var queued = 0
        var finished = false
        var failure: VouchError?
        var waiter: CheckedContinuation<Void, Never>?
        var sleeps = 0
    }

    private let state = Mutex(State())

    package init() {}

    /// How many times a reader has gone to sleep waiting for data; a waiter
    /// woken for nothing shows up here (for tests).
    package var sleeps: Int { state.withLock { $0.sleeps } }

    /// Adds bytes read from the stream.
    package func append(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            s.chunks.append(bytes)
            s.queued += bytes.count
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume()
    }

    /// Marks the end of the stream: `next` returns the remaining bytes, then
    /// `.end`, or throws `error` if one is given. Only the first end counts.
    package func finish(_ error: VouchError? = nil) {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            guard !s.finished else { return nil }
            s.finished = true
            s.failure = error
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume()
    }

    /// Whether the producer has finished (queued bytes may remain).
    package var isFinished: Bool { state.withLock { $0.finished } }

    /// Bytes queued and not yet taken.
    package var queuedBytes: Int { state.withLock { $0.queued } }

    /// Returns all queued bytes, waiting (until `deadline`, if given) for some
    /// if none are queued.
    /// - Throws: `.cancelled` if the task is cancelled while waiting, or the
    ///   error the stream was finished with (after the remaining bytes).
    package func next(until deadline: Deadline? = nil) async throws(VouchError) -> Next {
        while true {
            if Task.isCancelled { throw VouchError.cancelled() }
            enum Step { case data([UInt8]), end(VouchError?), wait }
            let step = state.withLock { s -> Step in
                if !s.chunks.isEmpty {
                    // append(contentsOf:) per chunk is a memcpy; Array(chunks.joined())
                    // walks a FlattenSequence byte by byte (seconds for 50 MB in debug builds).
                    var all = s.chunks[0]
                    if s.chunks.count > 1 {
                        all.reserveCapacity(s.queued)
                        for chunk in s.chunks.dropFirst() { all.append(contentsOf: chunk) }
                    }
                    s.chunks.removeAll(keepingCapacity: true)
                    s.queued = 0
                    return .data(all)
                }
                return s.finished ? .end(s.failure) : .wait
            }
            switch step {
            case .data(let bytes): return .bytes(bytes)
            case .end(let error?): throw error
            case .end(nil): return .end
            case .wait: break
            }
            if let deadline, deadline.hasPassed { return .timedOut }
            let alarm = deadline.map { Alarm.schedule(at: $0) { [self] in wake() } }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                    let resumeNow = state.withLock { s -> Bool in
                        if !s.chunks.isEmpty || s.finished || Task.isCancelled || deadline?.hasPassed == true { return true }
                        s.waiter = c
                        s.sleeps += 1
                        return false
                    }
                    if resumeNow { c.resume() }
                }
            } onCancel: {
                wake()
            }
            alarm?.cancel()
        }
    }

    /// Like `next(until:)` without a deadline, for consumers that read to the end.
    /// Returns nil at the end of the stream.
    package func next() async throws(VouchError) -> [UInt8]? {
        switch try await next(until: nil) {
        case .bytes(let bytes): return bytes
        case .end, .timedOut: return nil
        }
    }

    private func wake() {
        state.withLock { s -> CheckedContinuation<Void, Never>? in
            defer { s.waiter = nil }
            return s.waiter
        }?.resume()
    }
}
