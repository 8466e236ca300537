import Foundation
import Glibc
import VouchSupport

extension NspawnBackend {
    /// Follows a start script's stdout until the container has booted: the
    /// PID line, then a readiness line, both within the boot timeout; then
    /// checks that nspawn has exactly one child, the container's init.
    /// - Throws: `VouchError.bootFailed` naming the machine, with the console tail.
    func awaitStartScript(_ script: String, process: ChildProcess) async throws(VouchError) {
        let clock = ContinuousClock()
        let end = clock.now.advanced(by: .milliseconds(Int(bootTimeout * 1000)))
        func failure(_ what: String) async -> VouchError {
            // Let the pumps drain what the script printed last.
            if process.exitStatus != nil { try? await delay(0.2) }
            return VouchError(.bootFailed, "start script \(script) " + what, machine: context.name,
                              outputTail: context.console.tail(lines: 30))
        }
        var nspawnPID: pid_t?
        while true {
            if nspawnPID == nil, let pid = watcher.nspawnPID {
                nspawnPID = pid
                context.log.debug("the start script says systemd-nspawn is pid \(pid) (of its PID namespace)", machine: context.name)
            }
            if nspawnPID != nil, watcher.ready { break }
            if let status = process.exitStatus {
                throw await failure(nspawnPID == nil ? "ended (\(status)) before printing \"systemd-nspawn's PID is …\""
                                                     : "ended (\(status)) before the container finished booting")
            }
            guard clock.now < end else {
                throw await failure(nspawnPID == nil
                    ? "printed no \"systemd-nspawn's PID is …\" line within \(formatSeconds(bootTimeout))"
                    : "printed no readiness line (\"systemd[1]: Startup finished in\" or \"Welcome to NixOS\") within \(formatSeconds(bootTimeout))")
            }
            try await delay(0.02)
        }
        let initPID = try await findInit(namespacePID: nspawnPID!, process: process, script: script)
        context.log.log("container booted; its init is pid \(initPID)", machine: context.name)
    }

    /// The only child of the nspawn the script named; polled for up to 5 s,
    /// as nspawn may still be forking when the console says "ready".
    private func findInit(namespacePID: pid_t, process: ChildProcess, script: String) async throws(VouchError) -> pid_t {
        let clock = ContinuousClock()
        let end = clock.now.advanced(by: .seconds(5))
        var nspawn: pid_t?
        var children: [pid_t] = []
        while clock.now < end {
            nspawn = nspawn ?? NspawnHost.hostPID(ofNamespacePID: namespacePID, under: process.pid)
            if let nspawn {
                children = NspawnHost.children(of: nspawn)
                if children.count == 1 {
                    recordMachineName(ofNspawn: nspawn)
                    return children[0]
                }
            }
            try await delay(0.02)
        }
        let what = nspawn.map { "systemd-nspawn (host pid \($0)) has \(children.count) children \(children), not just the container's init" }
            ?? "printed pid \(namespacePID), but no such process runs under the script"
        throw VouchError(.bootFailed, "start script \(script): \(what)", machine: context.name,
                         outputTail: context.console.tail(lines: 30))
    }
}
