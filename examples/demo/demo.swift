// The Vouch demo: a systemd server running nginx and a minimal client.
// Every node in demo.json is a `Machine` variable named after it.
import Foundation

try await subtest("boot both machines in parallel") {
    try await startAll()
}

try await subtest("nginx comes up on the server") {
    try await server.waitForUnit("nginx.service")
    try await server.waitForOpenPort(80)
    let page = try await server.succeed("curl -sf http://localhost/")
    try assertContains(page, "Welcome to nginx")
}

try await subtest("succeed and fail") {
    let kernel = try await client.succeed("uname -r")
    print("client runs kernel \(kernel.trimmingCharacters(in: .whitespacesAndNewlines))")
    try await client.fail("test -e /etc/no-such-file")
    let (status, output) = try await { let r = try await server.execute("systemctl is-active nginx"); return (r.status, r.text) }()
    try assertEqual(status, 0)
    try assertEqual(output, "active\n")
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
