import Foundation
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

func onVLANs(_ name: String, _ vlans: [Int], image: String = "minimal") -> MachineSpec {
    var m = guest(name, image: image)
    m.vlans = vlans
    return m
}

/// Multi-machine networking on real guests: VDE switches, addressing,
/// /etc/hosts, link faults, port forwarding, isolation between runs.
@Suite(.serialized)
struct NetworkTests {
    @Test func threeMachinesReachEachOtherByNameAndAddressAndSurviveABlock() async throws {
        let run = try await RealRun.run([guest("a"), guest("b"), guest("c")]) { d in
            let (a, b, c) = (try d.machine("a"), try d.machine("b"), try d.machine("c"))
            try await d.startAll()
            for (from, to) in [(a, "b"), (a, "c"), (b, "a"), (b, "c"), (c, "a"), (c, "b")] {
                try await from.succeed("ping -c 1 -W 5 \(to)")
            }
            try await a.succeed("ping -c 1 -W 5 192.168.1.3", "ping -c 1 -W 5 2001:db8:1::2")
            let hosts = try await c.succeed("cat /etc/hosts")
            #expect(hosts.contains("192.168.1.1 a") && hosts.contains("2001:db8:1::2 b"), "\(hosts)")

            try await b.block()
            try await a.fail("ping -c 1 -W 2 b")
            try await c.succeed("ping -c 1 -W 5 a")
            try await b.unblock()
            try await a.waitUntilSucceeds("ping -c 1 -W 2 b", timeout: 60)
        }
        #expect(run.outcome == .passed, "\(run.outcome)")
    }

    @Test func vlansSeparateMachinesAndAMachineOnTwoVLANsReachesBoth() async throws {
        let run = try await RealRun.run([onVLANs("left", [1]), onVLANs("right", [2]), onVLANs("router", [1, 2])]) { d in
            let (left, right, router) = (try d.machine("left"), try d.machine("right"), try d.machine("router"))
            try await d.startAll()
            // Node numbers: left 1, right 2, router 3.
            try await router.succeed("ping -c 1 -W 5 192.168.1.1", "ping -c 1 -W 5 192.168.2.2")
            try await left.succeed("ping -c 1 -W 5 192.168.1.3")
            try await right.succeed("ping -c 1 -W 5 192.168.2.3")
            try await left.fail("ping -c 1 -W 2 192.168.2.2")
            try await right.fail("ping -c 1 -W 2 192.168.1.1")
        }
        #expect(run.outcome == .passed, "\(run.outcome)")
    }

    @Test func forwardPortIsReachableFromTheHostOnLoopback() async throws {
        let run = try await RealRun.run([guest("web")]) { d in
            let web = try d.machine("web")
            try await web.succeed("mkdir -p /tmp/www && echo hello-from-the-guest > /tmp/www/index.html && httpd -p 8080 -h /tmp/www")
            try await web.waitForOpenPort(8080)
            let port = try await web.forwardPort(guest: 8080)
            let body = try await hostCurl("http://127.0.0.1:\(port)/index.html")
            #expect(body == "hello-from-the-guest\n")
            // Forwards bind to loopback only.
            let listeners = (try? String(contentsOfFile: "/proc/net/tcp", encoding: .utf8)) ?? ""
            let hexPort = String(format: "%04X", port)
            #expect(listeners.contains("0100007F:\(hexPort)"), "expected 127.0.0.1:\(port) listening")
            #expect(!listeners.contains("00000000:\(hexPort)"), "must not listen on all addresses")
        }
        #expect(run.outcome == .passed, "\(run.outcome)")
    }

    @Test(arguments: [false, true])
    func tapNetworkInAPrivateNamespace(userNamespace: Bool) async throws {
        let hostLinks = hostInterfaceNames()
        let namespaceID = OutputBox()
        var a = guest("a")
        a.vlans = [1]
        var b = guest("b")
        b.vlans = [1, 2]
        var spec = TestSpec(name: "tap", machines: [a, b])
        spec.network = .tap
        var options = RunOptions(outputDirectory: RealRun.outputDirectory("tap"))
        options.quiet = true
        options.userNamespaceNetwork = userNamespace
        let driver = try Driver(spec: spec, options: options)
        let outcome = await driver.run { d in
            let (a, b) = (try d.machine("a"), try d.machine("b"))
            try await d.startAll()
            try await a.succeed("ping -c 1 -W 5 b", "ping -c 1 -W 5 192.168.1.254")
            try await b.succeed("ping -c 1 -W 5 a", "ping -c 1 -W 5 192.168.2.254", "ping -c 1 -W 5 2001:db8:1::1")
            try await b.block()
            try await a.fail("ping -c 1 -W 2 b")
            try await b.unblock()
            try await a.waitUntilSucceeds("ping -c 1 -W 2 b", timeout: 60)
            // forwardPort relays from the host's loopback into the namespace.
            try await a.succeed("mkdir -p /tmp/www && echo hello-through-tap > /tmp/www/index.html && httpd -p 8080 -h /tmp/www")
            try await a.waitForOpenPort(8080)
            let port = try await a.forwardPort(guest: 8080)
            for _ in 0..<2 {
                let body = try await hostCurl("http://127.0.0.1:\(port)/index.html")
                #expect(body == "hello-through-tap\n")
            }
            let pid = try #require(d.namespaceHolderPID)
            namespaceID.value = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/net")) ?? ""
            // Nothing appeared in the host's own namespace.
            #expect(hostInterfaceNames() == hostLinks)
        }
        #expect(outcome == .passed, "\(outcome)")
        RealRun(driver: driver, outcome: outcome).expectNoLeftovers()
        if outcome == .passed { try? FileManager.default.removeItem(at: options.outputDirectory) }
        #expect(namespaceID.value.hasPrefix("net:["))
        #expect(processes(inNetworkNamespace: namespaceID.value).isEmpty, "the namespace should be gone with its last process")
    }

    @Test func twoRunsWithVLANOneDoNotSeeEachOther() async throws {
        // Run A's "b" listens on 192.168.1.2:7777; run B's "a" connects to the
        // same address and must reach its own "b" (which does not listen), never A's.
        let listening = AsyncFlag()
        let probed = AsyncFlag()
        async let runA = RealRun.run([guest("a"), guest("b")], name: "isolationA") { d in
            let b = try d.machine("b")
            try await d.startAll()
            try await b.succeed("(nc -l -p 7777 > /tmp/got 2>&1 &) ; sleep 1")
            await listening.set()
            await probed.wait()
            #expect(try await b.succeed("cat /tmp/got") == "")
        }
        async let runB = RealRun.run([guest("a"), guest("b")], name: "isolationB") { d in
            let a = try d.machine("a")
            try await d.startAll()
            await listening.wait()
            try await a.fail("echo crossed > /dev/tcp/192.168.1.2/7777")
            await probed.set()
        }
        let (resultA, resultB) = try await (runA, runB)
        #expect(resultA.outcome == .passed, "\(resultA.outcome)")
        #expect(resultB.outcome == .passed, "\(resultB.outcome)")
        #expect(resultA.driver.runDirectory != resultB.driver.runDirectory)
    }
}

/// A one-shot flag tasks can wait for.
actor AsyncFlag {
    private var isSet = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func set() {
        isSet = true
        waiters.forEach { $0.resume() }
        waiters.removeAll()
    }

    func wait() async {
        if isSet { return }
        await withCheckedContinuation { waiters.append($0) }
    }
}

/// Fetches `url` with the host's curl.
func hostCurl(_ url: String) async throws -> String {
    try await ChildProcess.run("curl", ["-sf", "-m", "20", url]).output
}

/// Processes whose network namespace is `id` (as readlink /proc/PID/ns/net shows it).
func processes(inNetworkNamespace id: String) -> [String] {
    let fm = FileManager.default
    return ((try? fm.contentsOfDirectory(atPath: "/proc")) ?? []).filter { pid in
        pid.allSatisfy(\.isNumber) && (try? fm.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/net")) == id
    }
}

/// The network interfaces of the host's own namespace.
func hostInterfaceNames() -> Set<String> {
    let text = (try? String(contentsOfFile: "/proc/net/dev", encoding: .utf8)) ?? ""
    return Set(text.split(separator: "\n").dropFirst(2).compactMap { $0.split(separator: ":").first?.trimmingCharacters(in: .whitespaces) })
}
