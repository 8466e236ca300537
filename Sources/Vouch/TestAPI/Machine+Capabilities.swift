import Foundation
import VouchBackends
import VouchSupport

extension Machine {
    /// Cuts every network link of the machine: other machines see it vanish.
    /// - Throws: `.unsupported` where the backend cannot.
    public func block() async throws(VouchError) {
        try await start()
        let links = try capability(LinkControl.self, .links, for: "block")
        log.log("blocking the network links", machine: name)
        try await links.setLinks(up: false)
    }

    /// Restores the links `block()` cut.
    /// - Throws: `.unsupported` where the backend cannot.
    public func unblock() async throws(VouchError) {
        try await start()
        let links = try capability(LinkControl.self, .links, for: "unblock")
        log.log("unblocking the network links", machine: name)
        try await links.setLinks(up: true)
    }

    /// Makes a TCP port of the guest reachable from the host, on 127.0.0.1
    /// only. With `host` nil a free host port is chosen. Returns the host port.
    /// - Throws: `.unsupported` where the backend cannot forward, `.other`
    ///   with the cause if the port is taken or the VMM refuses.
    @discardableResult
    public func forwardPort(host: Int? = nil, guest: Int) async throws(VouchError) -> Int {
        try await start()
        let forwarding = try capability(PortForwarding.self, .portForwarding, for: "forwardPort")
        guard (1...65535).contains(guest), host.map({ (1...65535).contains($0) }) ?? true else {
            throw VouchError(.invalidSpec, "forwardPort: ports must be within 1...65535 (host \(host.map(String.init) ?? "any"), guest \(guest))",
                             machine: name)
        }
        let hostPort: Int
        if let host {
            hostPort = host
        } else {
            do { hostPort = try LoopbackTCP.freePort() } catch {
                throw VouchError(.other, "forwardPort: no free port on 127.0.0.1", machine: name, cause: error)
            }
        }
        log.log("forwarding 127.0.0.1:\(hostPort) to port \(guest)", machine: name)
        try await forwarding.forwardPort(hostPort: hostPort, guestPort: guest)
        return hostPort
    }

    /// Runs a QEMU monitor (HMP) command, e.g. `info status` or `device_add …`,
    /// and returns its output (nixpkgs' `send_monitor_command`).
    /// - Throws: `.unsupported` for backends without a monitor, `.qmpError` if QEMU rejects it.
    @discardableResult
    public func sendMonitorCommand(_ command: String) async throws(VouchError) -> String {
        try await start()
        let monitor: any MonitorAccess
        do { monitor = try capability(MonitorAccess.self, .monitor, for: "sendMonitorCommand") } catch { throw error.on(name, command: command) }
        log.log("monitor: \(command)", machine: name)
        do { return try await monitor.monitorCommand(command) } catch { throw error.on(name, command: command) }
    }

    /// Runs a human monitor command and returns what a client of the monitor
    /// socket reads for it, byte for byte: QEMU's line editor echoing the
    /// command, the output with CR LF line ends, and the next `(qemu) `
    /// prompt. This is what nixpkgs' `send_monitor_command` returns; for the
    /// output alone use `sendMonitorCommand`.
    /// - Throws: `.unsupported` for backends without a monitor, `.qmpError`
    ///   if the monitor does not answer.
    public func monitorTranscript(_ command: String) async throws(VouchError) -> String {
        try await start()
        let monitor: any MonitorAccess
        do { monitor = try capability(MonitorAccess.self, .monitor, for: "send_monitor_command") } catch { throw error.on(name, command: command) }
        log.log("monitor: \(command)", machine: name)
        do { return try await monitor.monitorTranscript(command) } catch { throw error.on(name, command: command) }
    }

    /// Sends a QMP command and returns QEMU's whole reply: `{"return": …}`,
    /// or `{"error": {"class": …, "desc": …}}` when QEMU refuses it.
    /// - Throws: `.unsupported` for backends without QMP, `.qmpError` when
    ///   QEMU does not answer.
    public func qmp(_ command: String, arguments: JSONValue? = nil) async throws(VouchError) -> JSONValue {
        try await start()
        let monitor = try capability(MonitorAccess.self, .monitor, for: "qmp(\(command))")
        log.log("QMP: \(command)", machine: name)
        return try await monitor.qmpReply(command, arguments: arguments)
    }

    /// The next QMP event of this machine's QEMU that the script has not read
    /// yet (they queue from the moment QEMU starts), waiting up to `timeout`
    /// seconds; nil if none came.
    /// - Throws: `.unsupported` for backends without QMP; `.cancelled`.
    public func nextQMPEvent(timeout: Double = 10) async throws(VouchError) -> JSONValue? {
        try await start()
        let monitor = try capability(MonitorAccess.self, .monitor, for: "QMP events")
        return try await monitor.nextQMPEvent(timeout: timeout)
    }
}
