import Foundation
import Glibc
import Synchronization

/// A wake-up scheduled on the process's one alarm thread; `cancel()` it
/// when the wait it guards ends first.
///
/// Waits with deadlines used a task sleeping until the deadline, cancelled
/// when the wait ended. A cancelled `Task.sleep` still sits in the
/// runtime's timer queue until its deadline, so a run of many short
/// commands with long timeouts piled up thousands of pending sleeps (and a
/// cancelled sleeper that then woke the next waiter turned a wait into a
/// spin). An alarm is an entry in one sorted list: cancelling removes it.
package struct Alarm: Sendable {
    private let id: UInt64

    /// Runs `action` on the alarm thread at `deadline`, unless cancelled
    /// first. `action` must be quick (resume a continuation, set a flag).
    package static func schedule(at deadline: Deadline, _ action: @escaping @Sendable () -> Void) -> Alarm {
        Alarm(id: AlarmClock.shared.add(deadline.instant, action))
    }

    /// Removes the alarm; after this returns its action will not start.
    package func cancel() { AlarmClock.shared.remove(id) }

    /// Alarms waiting to go off (for tests).
    package static var pendingCount: Int { AlarmClock.shared.pending }
}

/// The thread behind `Alarm`: sleeps in `poll` on a pipe until the nearest
/// alarm, and is poked through the pipe when a nearer one is added.
private final class AlarmClock: Sendable {
    static let shared = AlarmClock()

    private struct Entry {
        let id: UInt64
        let instant: ContinuousClock.Instant
        let action: @Sendable () -> Void
    }

    private struct State {
        var entries: [Entry] = []      // sorted by instant, nearest first
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())
    private let wakeFD: Int32
    private let pokeFD: Int32

    private init() {
        var fds: [Int32] = [-1, -1]
        precondition(pipe(&fds) == 0, "pipe failed: errno \(errno)")
        for fd in fds {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        }
        (wakeFD, pokeFD) = (fds[0], fds[1])
        let thread = Thread { [self] in run() }
        thread.name = "vouch-alarms"
        thread.start()
    }

    var pending: Int { state.withLock { $0.entries.count } }

    func add(_ instant: ContinuousClock.Instant, _ action: @escaping @Sendable () -> Void) -> UInt64 {
        let (id, nearest) = state.withLock { s -> (UInt64, Bool) in
            s.nextID += 1
            let index = s.entries.firstIndex { $0.instant > instant } ?? s.entries.endIndex
            s.entries.insert(Entry(id: s.nextID, instant: instant, action: action), at: index)
            return (s.nextID, index == 0)
        }
        if nearest { poke() }
        return id
    }

    func remove(_ id: UInt64) {
        state.withLock { s in
            if let index = s.entries.firstIndex(where: { $0.id == id }) { s.entries.remove(at: index) }
        }
    }

    private func poke() {
        var one: UInt8 = 1
        _ = write(pokeFD, &one, 1)
    }

    private func run() {
        while true {
            let now = ContinuousClock.now
            let (due, next) = state.withLock { s -> ([Entry], ContinuousClock.Instant?) in
                let split = s.entries.firstIndex { $0.instant > now } ?? s.entries.endIndex
                let due = Array(s.entries[..<split])
                s.entries.removeFirst(split)
                return (due, s.entries.first?.instant)
            }
            for entry in due { entry.action() }
            if !due.isEmpty { continue }
            // Milliseconds, rounded up: an alarm never goes off early.
            let timeout = next.map { Int32(min(Double(Int32.max), ((max(.zero, $0 - now)).seconds * 1000).rounded(.up))) } ?? -1
            var entry = pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)
            _ = poll(&entry, 1, timeout)
            var drain = [UInt8](repeating: 0, count: 64)
            _ = read(wakeFD, &drain, drain.count)
        }
    }
}
