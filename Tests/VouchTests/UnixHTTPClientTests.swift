import Foundation
import Testing

@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// The REST client firecracker and cloud-hypervisor are driven with, against
/// a socket that answers as each VMM does, and as a broken one would.
@Suite struct UnixHTTPClientTests {
    func server(_ reply: @escaping @Sendable ([UInt8]) -> ScriptedUnixServer.Reply) throws -> (ScriptedUnixServer, UnixHTTPClient) {
        let path = NSTemporaryDirectory() + "vouch-api-\(UUID().uuidString.prefix(8)).sock"
        let server = try ScriptedUnixServer(path: path, reply: reply)
        return (server, UnixHTTPClient(socketPath: path, machine: "fc", peer: "firecracker"))
    }

    static func answer(_ text: String) -> @Sendable ([UInt8]) -> ScriptedUnixServer.Reply {
        { ScriptedUnixServer.isComplete($0) ? .respond(Array(text.utf8)) : .readMore }
    }

    @Test func aPutWithAJSONBodyAndA204() async throws {
        let (srv, client) = try server(Self.answer("HTTP/1.1 204 No Content\r\nServer: Firecracker API\r\n\r\n"))
        defer { srv.stop() }
        let result = try await client.call("PUT", "/machine-config", body: ["vcpu_count": 1, "mem_size_mib": 256])
        #expect(result == nil)
        let request = try #require(srv.received.first)
        #expect(request.hasPrefix("PUT /machine-config HTTP/1.1\r\n"))
        #expect(request.contains("Content-Type: application/json\r\n"))
        let body = String(request[request.range(of: "\r\n\r\n")!.upperBound...])
        #expect(try JSONValue.parse(Array(body.utf8)) == ["vcpu_count": 1, "mem_size_mib": 256])
    }

    @Test func bodiesByLengthByChunksAndToTheClose() async throws {
        for (raw, expected) in [
            ("HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n{\"state\":\"Ok\"}\r\n", "{\"state\":\"Ok\"}\r\n"),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2;x=y\r\n1}\r\n0\r\n\r\n", "{\"a\":1}"),
            ("HTTP/1.0 200 OK\r\n\r\n{\"b\":2}", "{\"b\":2}"),
        ] {
            let (srv, client) = try server(Self.answer(raw))
            defer { srv.stop() }
            let response = try await client.send("GET", "/")
            #expect(response.status == 200 && response.text == expected, "\(raw)")
        }
    }

    @Test func aRefusalQuotesTheVMM() async throws {
        let fault = #"{"fault_message":"The requested operation is not supported after starting the microVM."}"#
        let (srv, client) = try server(Self.answer("HTTP/1.1 400 Bad Request\r\nContent-Length: \(fault.utf8.count)\r\n\r\n\(fault)"))
        defer { srv.stop() }
        let error = await #expect(throws: VouchError.self) { try await client.call("PUT", "/boot-source", body: ["kernel_image_path": "/k"]) }
        #expect(error?.kind == .apiError && error?.machine == "fc")
        #expect(error?.message == "firecracker refused PUT /boot-source (HTTP 400): The requested operation is not supported after starting the microVM.")
        // A plain text error.
        let (srv2, client2) = try server(Self.answer("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 18\r\n\r\nVM is not created\n"))
        defer { srv2.stop() }
        let e2 = await #expect(throws: VouchError.self) { try await client2.call("PUT", "/api/v1/vm.boot") }
        #expect(e2?.message.hasSuffix("(HTTP 500): VM is not created") == true, "\(String(describing: e2))")
        // cloud-hypervisor's error chain, outermost first.
        let chain = #"["Error from API","The VM could not boot","VM config is missing"]"#
        let (srv3, client3) = try server(Self.answer("HTTP/1.1 404 Not Found\r\nContent-Length: \(chain.utf8.count)\r\n\r\n\(chain)"))
        defer { srv3.stop() }
        let e3 = await #expect(throws: VouchError.self) { try await client3.call("PUT", "/api/v1/vm.boot") }
        #expect(e3?.message.hasSuffix("(HTTP 404): Error from API: The VM could not boot: VM config is missing") == true, "\(String(describing: e3))")
    }

    @Test func brokenPeersAreClearErrorsWithinTheDeadline() async throws {
        let (closing, c1) = try server { ScriptedUnixServer.isComplete($0) ? .close : .readMore }
        defer { closing.stop() }
        let e1 = await #expect(throws: VouchError.self) { try await c1.send("GET", "/") }
        #expect(e1?.kind == .apiError && e1?.message.contains("closed the connection before it answered GET / completely (no answer at all)") == true)

        let (half, c2) = try server(Self.answer("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"cut"))
        defer { half.stop() }
        let e2 = await #expect(throws: VouchError.self) { try await c2.send("GET", "/vm.info") }
        #expect(e2?.kind == .apiError && e2?.message.contains("after 45 bytes") == true, "\(String(describing: e2))")

        let (silent, c3) = try server { ScriptedUnixServer.isComplete($0) ? .hang : .readMore }
        defer { silent.stop() }
        let began = ContinuousClock.now
        let e3 = await #expect(throws: VouchError.self) { try await c3.send("PUT", "/actions", body: ["action_type": "InstanceStart"], timeout: 0.5) }
        #expect(e3?.kind == .timeout && e3?.message == "firecracker did not answer PUT /actions within 0.5 s", "\(String(describing: e3))")
        #expect(ContinuousClock.now - began < .seconds(5))

        let (garbage, c4) = try server(Self.answer("SSH-2.0-OpenSSH\r\n\r\n"))
        defer { garbage.stop() }
        let e4 = await #expect(throws: VouchError.self) { try await c4.send("GET", "/") }
        #expect(e4?.kind == .apiError && e4?.message.contains("not HTTP/1.1: the status line \"SSH-2.0-OpenSSH\"") == true)

        let nobody = UnixHTTPClient(socketPath: "/nonexistent/api.sock", machine: "fc", peer: "firecracker")
        let e5 = await #expect(throws: VouchError.self) { try await nobody.send("GET", "/") }
        #expect(e5?.kind == .apiError && e5?.cause != nil && e5?.message.contains("cannot connect to its API socket /nonexistent/api.sock") == true)
    }
}
