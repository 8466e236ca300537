import ArgumentParser
import Foundation
import Glibc
@_spi(Benchmark) import Vouch

extension Bench {
    /// Boot to first command and command round trips per backend, on the
    /// systemd image. The ssh row drives the sshd of an nspawn container
    /// through a forwarded loopback port, so it needs no host outside the run.
    func runBackends(_ list: String) async throws {
        var rows: [[String]] = []
        for backend in list.split(separator: ",").map(String.init) {
            let result = try await measure(backend)
            rows.append([backend, String(format: "%.2f s", result.boot),
                         ms(percentile(result.vouch, 0.5)), ms(percentile(result.vouch, 0.99))])
        }
        print(table([["backend", "boot→1st cmd", "round trip p50", "round trip p99"]] + rows))
        print("systemd image; \(calls) round trips of execute(\"true\") each; accelerator (qemu): "
              + (Accelerator.lastResolved?.rawValue.uppercased() ?? "-"))
    }

    private func measure(_ backend: String) async throws -> Results {
        let out = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vouch-bench-\(getpid())")
        defer { try? FileManager.default.removeItem(at: out) }
        var machines: [MachineSpec] = []
        var bench = MachineSpec(name: "bench")
        var key = ""
        var port = 0
        switch backend {
        case "qemu", "nspawn":
            bench.backend = backend
            bench.image = "systemd"
            bench.vlans = []
        case "ssh":
            var host = MachineSpec(name: "sshd")
            host.backend = "nspawn"
            host.image = "systemd"
            host.vlans = []
            machines.append(host)
            try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
            key = out.appendingPathComponent("id").path
            try runTool("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", key])
            port = try freeLoopbackPort()
            bench.backend = "ssh"
            bench.vlans = []
            var s = SSHSettings(host: "127.0.0.1")
            s.port = port
            s.user = "root"
            s.identityFile = key
            s.knownHosts = .off
            bench.ssh = s
        default:
            writeStderr("bench: unknown backend '\(backend)' (qemu, nspawn or ssh)\n")
            throw ExitCode(2)
        }
        machines.append(bench)
        let driver = benchDriver(TestSpec(name: "bench-\(backend)", globalTimeout: 1800, machines: machines), outputDirectory: out)
        let result = Results()
        let calls = self.calls
        let publicKey = backend == "ssh" ? try String(contentsOfFile: key + ".pub", encoding: .utf8) : ""
        let forwardedPort = port
        writeStderr("bench: \(backend): booting…\n")
        let outcome = await driver.run { d in
            if backend == "ssh" {
                let sshd = try d.machine("sshd")
                try await sshd.succeed("mkdir -p -m 700 /root/.ssh && echo \(shellQuote(publicKey)) > /root/.ssh/authorized_keys")
                try await sshd.waitForUnit("ssh.service")
                try await sshd.forwardPort(host: forwardedPort, guest: 22)
            }
            let m = try d.machine("bench")
            let began = ContinuousClock.now
            try await m.succeed("true")
            result.boot = (ContinuousClock.now - began).seconds
            for _ in 0..<10 { try await m.succeed("true") }
            result.vouch = try await timed(calls) { try await m.execute("true") }
        }
        guard outcome == .passed else {
            writeStderr("bench: \(backend) failed: \(outcome)\n")
            throw ExitCode(1)
        }
        return result
    }

    private func runTool(_ path: String, _ args: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw ExitCode(1) }
    }

    /// A TCP port on 127.0.0.1 that is free right now.
    private func freeLoopbackPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard bound else { throw ExitCode(1) }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}
