// The Vouch demo: the classic two-node test. `server` (systemd guest) runs
// nginx; `client` (minimal guest) fetches its page by hostname over VLAN 1.
// Every node in demo.json is a `Machine` variable named after it.
import Foundation

try await subtest("boot both machines in parallel") {
    try await startAll()
}

try await subtest("nginx comes up on the server") {
    try await server.waitForUnit("nginx.service")
    try await server.waitForOpenPort(80)
    let (status, output) = try await { let r = try await server.execute("systemctl is-active nginx"); return (r.status, r.text) }()
    try assertEqual(status, 0)
    try assertEqual(output, "active\n")
}

try await subtest("the client fetches the page by hostname") {
    try await client.succeed("ping -c 1 -W 5 server")
    let page = try await client.succeed("wget -qO- http://server/")
    try assertContains(page, "Welcome to nginx")
    try await client.fail("test -e /etc/no-such-file")
}

try await subtest("a cut link makes the fetch fail, and it recovers") {
    try await server.block()
    try await client.fail("timeout 5 wget -qO- http://server/")
    try await server.unblock()
    try await client.waitUntilSucceeds("timeout 5 wget -qO- http://server/", timeout: 60)
}

try await subtest("copy a file host -> client and server -> host") {
    let note = FileManager.default.temporaryDirectory.appendingPathComponent("vouch-demo-note.txt")
    try "hello from the host\n".write(to: note, atomically: true, encoding: .utf8)
    try await client.copyFromHost(note.path, to: "/root/note.txt")
    try assertEqual(try await client.succeed("cat /root/note.txt"), "hello from the host\n")
    try await server.succeed("journalctl -u nginx --no-pager > /root/nginx-journal.txt")
    let copied = try await server.copyFromMachine("/root/nginx-journal.txt")
    print("copied the server's nginx journal to \(copied.path)")
}

try await subtest("clean shutdown") {
    try await client.shutdown()
    try await server.shutdown()
}
