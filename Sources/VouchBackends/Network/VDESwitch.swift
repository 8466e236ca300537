import Foundation
import VouchSupport
import VouchWire

/// One VLAN: a `vde_switch` (in hub mode, as nixpkgs runs it) in the run's
/// private directory, owned by the driver and stopped with the run.
package final class VDESwitch: Sendable {
    package let vlan: Int
    /// The switch's socket directory: QEMU's `-netdev vde,sock=` and a start
    /// script's `QEMU_VDE_SOCKET_<vlan>`.
    package let socketDirectory: String
    private let process: ChildProcess

    /// The socket directory VLAN `vlan` gets in `runDirectory`.
    package static func socketDirectory(vlan: Int, runDirectory: String) -> String {
        "\(runDirectory)/vde\(vlan).ctl"
    }

    /// Starts the switch and waits until its management socket answers.
    /// - Throws: `.spawnFailed` without `vde_switch` (package vde2),
    ///   `.other` if it does not come up within 10 s; `.cancelled`.
    package static func start(vlan: Int, runDirectory: String, log: TestLog) async throws(VouchError) -> VDESwitch {
        let sockets = socketDirectory(vlan: vlan, runDirectory: runDirectory)
        let management = "\(runDirectory)/vde\(vlan).mgmt"
        let process: ChildProcess
        do {
            // vde_switch reads commands on stdin and quits at end of file: the
            // pipe we keep open is what keeps it running.
            process = try ChildProcess(
                "vde_switch", ["--sock", sockets, "--dirmode", "0700", "--mode", "0600", "--mgmt", management, "--hub"],
                pipes: [.stdin, .stdout, .stderr])
        } catch {
            throw VouchError(.spawnFailed, "\(error.message) (install the vde2 package)", cause: error)
        }
        let output = OutputCollector()
        let drains = [process.stdout!, process.stderr!].map { reader in Task { await output.drain(reader.queue) } }
        do {
            try await VDEManagement.waitReady(socket: management, timeout: 10, stillStarting: { process.exitStatus == nil })
        } catch {
            await process.terminate(grace: 0.5)
            for drain in drains { drain.cancel() }
            if error.kind == .cancelled { throw error }
            throw VouchError(.other, "vde_switch for VLAN \(vlan) did not come up", outputTail: tail(output.text), cause: error)
        }
        log.debug("VLAN \(vlan): vde_switch pid \(process.pid) at \(sockets)")
        return VDESwitch(vlan: vlan, socketDirectory: sockets, process: process)
    }

    private init(vlan: Int, socketDirectory: String, process: ChildProcess) {
        self.vlan = vlan
        self.socketDirectory = socketDirectory
        self.process = process
    }

    /// Stops the switch. Never throws.
    package func stop() async {
        await process.terminate(grace: 1)
    }
}
