import Foundation
import Synchronization
import Testing

@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting

/// The vsock `CONNECT`/`OK` handshake, against a socket that answers as a
/// VMM's vsock device does: accepting, refusing (no listener yet), silent,
/// or garbled.
@Suite struct VsockConnectorTests {
    final class Attempts: Sendable {
        let count = Mutex(0)
        func next() -> Int { count.withLock { $0 += 1; return $0 } }
    }

    func socketPath() -> String { NSTemporaryDirectory() + "vouch-vsock-\(UUID().uuidString.prefix(8)).sock" }

    static func line(_ request: [UInt8]) -> Bool { request.contains(UInt8(ascii: "\n")) }

    @Test func theStreamAfterOKIsTheChannelAndRefusalsAreRetried() async throws {
        let attempts = Attempts()
        let path = socketPath()
        // The first two CONNECTs find no listener; the third is accepted.
        let server = try ScriptedUnixServer(path: path) { request in
            guard Self.line(request) else { return .readMore }
            return attempts.next() < 3 ? .close : .respond(Array("OK 1073741824\nbanner after OK\n".utf8))
        }
        defer { server.stop() }
        let channel = try await VsockConnector.connect(path: path, port: 1234, machine: "fc", until: Deadline(seconds: 20))
        var got: [UInt8] = []
        while let bytes = try await channel.input.next() { got += bytes }
        #expect(String(decoding: got, as: UTF8.self) == "banner after OK\n")
        #expect(server.received == Array(repeating: "CONNECT 1234\n", count: 3))
        channel.close()
    }

    @Test func failuresSayWhatHappened() async throws {
        let refusing = try ScriptedUnixServer(path: socketPath()) { Self.line($0) ? .close : .readMore }
        defer { refusing.stop() }
        let e1 = await #expect(throws: VouchError.self) {
            _ = try await VsockConnector.connect(path: refusing.path, port: 52, machine: "fc", until: Deadline(seconds: 0.5))
        }
        #expect(e1?.kind == .bootFailed && e1?.message.contains("nothing in the guest accepted vsock port 52") == true, "\(String(describing: e1))")

        let silent = try ScriptedUnixServer(path: socketPath()) { Self.line($0) ? .hang : .readMore }
        defer { silent.stop() }
        let e2 = await #expect(throws: VouchError.self) {
            _ = try await VsockConnector.connect(path: silent.path, port: 52, machine: "fc", until: Deadline(seconds: 1), handshakeTimeout: 0.3)
        }
        #expect(e2?.kind == .bootFailed && e2?.message.contains("got no answer within 0.3 s") == true, "\(String(describing: e2))")

        let garbled = try ScriptedUnixServer(path: socketPath()) { Self.line($0) ? .respond(Array("FAILURE no such port\n".utf8)) : .readMore }
        defer { garbled.stop() }
        let e3 = await #expect(throws: VouchError.self) {
            _ = try await VsockConnector.connect(path: garbled.path, port: 52, machine: "fc", until: Deadline(seconds: 5))
        }
        #expect(e3?.kind == .bootFailed && e3?.message.contains(#""FAILURE no such port", not OK <port>"#) == true, "\(String(describing: e3))")

        let e4 = await #expect(throws: VouchError.self) {
            _ = try await VsockConnector.connect(path: "/nonexistent/v.sock", port: 52, machine: "fc", until: Deadline(seconds: 0.3))
        }
        #expect(e4?.message.contains("the vsock socket /nonexistent/v.sock never accepted a connection") == true)

        let gaveUp = await #expect(throws: VouchError.self) {
            _ = try await VsockConnector.connect(path: refusing.path, port: 52, machine: "fc", until: Deadline(seconds: 60), unless: { true })
        }
        #expect(gaveUp?.kind == .bootFailed)
    }
}
