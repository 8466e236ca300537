import Foundation

/// One VLAN: a `vde_switch` (in hub mode, as nixpkgs runs it) in the run's
/// private directory, owned by the driver and stopped with the run.
final class VDESwitch: Sendable {
    let vlan: Int
    /// The switch's socket directory: QEMU's `-netdev vde,sock=` and a start
    /// script's `QEMU_VDE_SOCKET_<vlan>`.
    let socketDirectory: String
    private let process: ChildProcess

    /// The socket directory VLAN `vlan` gets in `runDirectory`.
    static func socketDirectory(vlan: Int, runDirectory: String) -> String {
        "\(runDirectory)/vde\(vlan).ctl"
    }

    /// Starts the switch and waits until its management socket answers.
    /// - Throws: `VouchError.spawnFailed` without `vde_switch` (package vde2),
    ///   `.other` if it does not come up within 10 s.
    static func start(vlan: Int, runDirectory: String, log: TestLog) async throws -> VDESwitch {
        let sockets = socketDirectory(vlan: vlan, runDirectory: runDirectory)
        let management = "\(runDirectory)/vde\(vlan).mgmt"
        let process: ChildProcess
        do {
            // vde_switch reads commands on stdin and quits at end of file: the
            // pipe we keep open is what keeps it running.
            process = try ChildProcess(
                "vde_switch", ["--sock", sockets, "--dirmode", "0700", "--mode", "0600", "--mgmt", management, "--hub"],
                pipes: [.stdin, .stdout, .stderr])
        } catch let error as VouchError {
            throw VouchError(.spawnFailed, "\(error.message) (install the vde2 package)")
        }
        let output = OutputCollector()
        Task { await output.drain(process.stdout!.queue) }
        Task { await output.drain(process.stderr!.queue) }
        do {
            try await withDeadline(seconds: 10) { try await waitReady(management: management, process: process) }
        } catch {
            await process.terminate(grace: 0.5)
            throw VouchError(.other, "vde_switch for VLAN \(vlan) did not come up: \(error)", outputTail: tail(output.text))
        }
        log.debug("VLAN \(vlan): vde_switch pid \(process.pid) at \(sockets)")
        return VDESwitch(vlan: vlan, socketDirectory: sockets, process: process)
    }

    private init(vlan: Int, socketDirectory: String, process: ChildProcess) {
        self.vlan = vlan
        self.socketDirectory = socketDirectory
        self.process = process
    }

    /// Ready means: `showinfo` on the management socket answers `1000 Success`.
    private static func waitReady(management: String, process: ChildProcess) async throws {
        let fd = try await UnixSocket.connect(path: management, retryingFor: 10, unless: { process.exitStatus != nil })
        let reader = FDReader(fd: fd, name: "vde-mgmt")
        defer { reader.shutdownSocket() }
        try writeAll(fd: fd, Array("showinfo\n".utf8))
        var seen: [UInt8] = []
        while let chunk = try await reader.queue.next() {
            seen += chunk
            if firstRange(of: Array("1000 Success".utf8), in: seen) != nil { return }
        }
        throw VouchError(.other, "the management socket closed: \(String(decoding: seen, as: UTF8.self))")
    }

    /// Stops the switch. Never throws.
    func stop() async {
        await process.terminate(grace: 1)
    }
}
