import Foundation
import FoundationXML
import Synchronization
import Testing

@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

@Suite struct VouchErrorTests {
    @Test func fullDescription() {
        let error = VouchError(
            .commandFailed, "command failed with exit status 3", machine: "server", command: "systemctl start x",
            status: 3, outputTail: "first\nsecond", location: .init(file: "test.swift", line: 12))
        #expect(error.description == """
            test.swift:12: server: command failed with exit status 3
              command: systemctl start x
              exit status: 3
              output tail:
                | first
                | second
            """)
    }

    @Test func minimalDescriptionAndOmissions() {
        #expect(VouchError(.other, "plain").description == "plain")
        // The command is not repeated when the message already shows it; an empty tail is left out.
        let e = VouchError(.timeout, "timed out waiting for `true`", machine: "m", command: "true", outputTail: "")
        #expect(e.description == "m: timed out waiting for `true`")
        // An empty line inside the tail keeps its bar.
        #expect(VouchError(.other, "x", outputTail: "a\n\nb").description == "x\n  output tail:\n    | a\n    | \n    | b")
    }

    @Test func locationIsFilledOnlyOnce() {
        let first = VouchError(.other, "x").at(.init(file: "a.swift", line: 1))
        let second = first.at(.init(file: "b.swift", line: 2))
        #expect(second.location?.description == "a.swift:1")
        #expect(second.description.hasPrefix("a.swift:1: "))
    }

    @Test func spawnFailedNamesTheProgram() async {
        let error = await expectVouchError(.spawnFailed) { _ = try ChildProcess("vouch-no-such-program-\(UUID().uuidString)", []) }
        #expect(error?.message.contains("cannot start vouch-no-such-program") == true)
        #expect(error?.message.contains("not found in PATH") == true)
    }

    @Test func tailKeepsTheLastLines() {
        let text = (1...30).map { "line \($0)" }.joined(separator: "\n") + "\n"
        let t = tail(text)
        #expect(t.split(separator: "\n").count == 20)
        #expect(t.hasPrefix("line 11\n"))
        #expect(t.hasSuffix("line 30"))
        #expect(tail("a\nb\nc\n", lines: 2) == "b\nc")
        #expect(tail("a\nb\nc", lines: 2) == "b\nc")
        #expect(tail("only") == "only")
        #expect(tail("") == "")
        #expect(tail("x\r\n\r\n") == "x")
    }

    @Test func tailLimitsBytes() {
        let long = String(repeating: "é", count: 5000)  // 10 000 bytes on one line
        let t = tail(long, maxBytes: 100)
        #expect(t.hasPrefix("…"))
        #expect(t.utf8.count <= 100 + "…".utf8.count)
        #expect(t.allSatisfy { $0 == "é" || $0 == "…" || $0 == "\u{FFFD}" })
    }
}

@Suite struct JUnitReportTests {
    @Test func xmlParsesAndCounts() throws {
        let report = JUnitReport(suiteName: "suite <&> \"quoted\"")
        report.record("boots", seconds: 1.25, failure: nil)
        report.record("a <b> & \"c\" 'd'", seconds: 0.5, failure: "first line <x>\nsecond & line\u{1B}[31mred\u{1B}[0m")
        report.record("ünïcödé ✓", seconds: 0, failure: nil)
        let xml = report.xml()
        let doc = try XMLDocument(data: Data(xml.utf8))
        let suite = try #require(try doc.nodes(forXPath: "/testsuites/testsuite").first as? XMLElement)
        #expect(suite.attribute(forName: "name")?.stringValue == "suite <&> \"quoted\"")
        #expect(suite.attribute(forName: "tests")?.stringValue == "3")
        #expect(suite.attribute(forName: "failures")?.stringValue == "1")
        #expect(suite.attribute(forName: "errors")?.stringValue == "0")
        #expect(suite.attribute(forName: "time")?.stringValue == "1.750")
        let cases = try doc.nodes(forXPath: "//testcase").compactMap { $0 as? XMLElement }
        #expect(cases.map { $0.attribute(forName: "name")?.stringValue } == ["boots", "a <b> & \"c\" 'd'", "ünïcödé ✓"])
        #expect(cases.allSatisfy { $0.attribute(forName: "classname")?.stringValue == "suite <&> \"quoted\"" })
        #expect(cases[0].attribute(forName: "time")?.stringValue == "1.250")
        let failures = try doc.nodes(forXPath: "//testcase/failure").compactMap { $0 as? XMLElement }
        try #require(failures.count == 1)
        #expect(failures[0].attribute(forName: "message")?.stringValue == "first line <x>")
        let body = failures[0].stringValue ?? ""
        #expect(body.hasPrefix("first line <x>\nsecond & line"))
        #expect(!body.contains("\u{1B}"), "control characters are not allowed in XML 1.0")
        #expect(cases[1].children?.count == 1)
        #expect(cases[0].childCount == 0)
    }

    @Test func emptyReportAndWrite() throws {
        let report = JUnitReport(suiteName: "empty")
        #expect(report.all.isEmpty)
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let url = URL(fileURLWithPath: dir + "/junit.xml")
        try report.write(to: url)
        let doc = try XMLDocument(contentsOf: url)
        let suite = try #require(try doc.nodes(forXPath: "//testsuite").first as? XMLElement)
        #expect(suite.attribute(forName: "tests")?.stringValue == "0")
        #expect(suite.attribute(forName: "failures")?.stringValue == "0")
    }
}

@Suite struct AlarmTests {
    @Test func goesOffAtItsDeadlineNotBefore() async throws {
        let fired = OneShot<ContinuousClock.Instant>()
        let began = ContinuousClock.now
        _ = Alarm.schedule(at: Deadline(seconds: 0.15)) { fired.set(.now) }
        guard case .value(let at) = await fired.wait(until: Deadline(seconds: 10)) else { Issue.record("the alarm did not go off"); return }
        #expect(at - began >= .milliseconds(150))
    }

    @Test func aCancelledAlarmDoesNotGoOff() async throws {
        let fired = Mutex(0)
        let alarms = (0..<100).map { _ in Alarm.schedule(at: Deadline(seconds: 0.1)) { fired.withLock { $0 += 1 } } }
        alarms.forEach { $0.cancel() }
        let control = OneShot<Void>()
        _ = Alarm.schedule(at: Deadline(seconds: 0.2)) { control.set(()) }
        _ = await control.wait(until: Deadline(seconds: 10))
        #expect(fired.withLock { $0 } == 0)
    }

    @Test func aNearerAlarmIsNotHeldUpByAFartherOne() async throws {
        let far = Alarm.schedule(at: Deadline(seconds: 3600)) {}
        defer { far.cancel() }
        let fired = OneShot<Void>()
        _ = Alarm.schedule(at: Deadline(seconds: 0.05)) { fired.set(()) }
        guard case .value = await fired.wait(until: Deadline(seconds: 10)) else { Issue.record("the near alarm waited for the far one"); return }
    }
}

@Suite struct ByteQueueTests {
    @Test func cancellationWhileWaitingKeepsLaterData() async throws {
        let queue = ByteQueue()
        let waiting = Task { try await queue.next() }
        try await Task.sleep(for: .milliseconds(100))
        waiting.cancel()
        let error = await #expect(throws: VouchError.self) { _ = try await waiting.value }
        #expect(error?.kind == .cancelled)
        queue.append([1, 2])
        queue.append([3])
        #expect(try await queue.next() == [1, 2, 3])
    }

    /// Cancelling a waiting `next()` at any moment relative to new data
    /// never loses the data: either `next()` returns it, or it stays queued.
    @Test func cancellationRacingDataLosesNothing() async throws {
        let queue = ByteQueue()
        for round in 0..<200 {
            let byte = UInt8(round % 256)
            let waiter = Task { try await queue.next() }
            let feeder = Task.detached {
                if round % 3 != 0 { try? await Task.sleep(for: .microseconds(Int.random(in: 0...300))) }
                queue.append([byte])
            }
            if round % 2 == 0 { try? await Task.sleep(for: .microseconds(Int.random(in: 0...300))) }
            waiter.cancel()
            await feeder.value
            switch await waiter.result {
            case .success(let got):
                #expect(got == [byte])
            case .failure(let error):
                #expect((error as? VouchError)?.kind == .cancelled)
                #expect(try await queue.next() == [byte], "round \(round): the byte was lost")
            }
        }
    }

    /// A wait that ended early leaves nothing behind that could wake a later
    /// one: a reader sleeps at most once per chunk it is sent. (Each wait
    /// used to arm a timer task whose cancellation woke the next waiter,
    /// which re-armed and cancelled one in turn: a spin.)
    @Test func aWaitIsNotWokenByTheOneBefore() async throws {
        let queue = ByteQueue()
        let chunks = 300
        let reader = Task {
            var got = 0
            while got < chunks {
                guard case .bytes(let bytes) = try await queue.next(until: Deadline(seconds: 30)) else { break }
                got += bytes.count
            }
            return got
        }
        for _ in 0..<chunks {
            try await Task.sleep(for: .milliseconds(1))
            queue.append([1])
        }
        #expect(try await reader.value == chunks)
        #expect(queue.sleeps <= chunks, "the reader went to sleep \(queue.sleeps) times for \(chunks) chunks")
    }

    @Test func aDeadlineEndsTheWait() async throws {
        let queue = ByteQueue()
        let began = ContinuousClock.now
        guard case .timedOut = try await queue.next(until: Deadline(seconds: 0.2)) else { Issue.record("expected a timeout"); return }
        #expect(ContinuousClock.now - began >= .milliseconds(200))
    }

    @Test func finishReturnsQueuedDataFirst() async throws {
        let queue = ByteQueue()
        queue.append([7])
        queue.append([])  // ignored
        queue.finish()
        #expect(queue.isFinished)
        #expect(try await queue.next() == [7])
        #expect(try await queue.next() == nil)
        #expect(try await queue.next() == nil)
    }

    @Test func finishWithErrorThrowsAfterTheData() async throws {
        let queue = ByteQueue()
        let waiter = Task { try await queue.next() }
        try await Task.sleep(for: .milliseconds(50))
        queue.append([1])
        #expect(try await waiter.value == [1])
        queue.append([2])
        queue.finish(VouchError(.machineDown, "boom"))
        queue.finish(nil)  // the first end wins
        #expect(try await queue.next() == [2])
        let error = await #expect(throws: VouchError.self) { _ = try await queue.next() }
        #expect(error?.message == "boom")
    }

    @Test func finishWakesAWaiter() async throws {
        let queue = ByteQueue()
        let waiter = Task { try await queue.next() }
        try await Task.sleep(for: .milliseconds(50))
        queue.finish()
        #expect(try await waiter.value == nil)
    }
}
