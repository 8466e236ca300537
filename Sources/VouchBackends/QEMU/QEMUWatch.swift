import Foundation
import VouchSupport
import VouchWire

/// Watching QEMU, not only the guest: QMP events that mean the guest no
/// longer runs on its own become a fault on the machine's health, which
/// fails every waiting call at once with the reason.
extension QEMUBackend {
    /// Handles one QMP event (called on the QMP client's reader).
    func handle(_ event: JSONValue) {
        guard let name = event["event"]?.stringValue else { return }
        let data = event["data"] ?? .null
        switch name {
        case "BLOCK_IO_ERROR":
            state.withLock { $0.blockError = data }
            context.log.warning("QEMU reports a disk I/O error: \(data)", machine: context.name)
            if data["action"]?.stringValue == "stop" { context.health.report(diskFault(data)) }
        case "GUEST_PANICKED":
            let panic = context.console.panicLine.map { ": \($0)" } ?? ""
            context.health.report(VouchError(.machineDown, "the guest kernel panicked (QEMU GUEST_PANICKED)\(panic)",
                                             machine: context.name, outputTail: context.console.tail(lines: 30)))
        case "RESET":
            // With rebooting allowed, a guest reboot resets instead of ending QEMU.
            if data["guest"]?.boolValue == true { context.health.noteGuestReset() }
        case "STOP":
            guard !state.withLock({ $0.pausing }) else { return }
            Task { await self.explainStop() }
        default:
            break
        }
    }

    /// A STOP Vouch did not ask for: find out why and report it.
    private func explainStop() async {
        guard let qmp = try? qmp() else { return }
        let status = (try? await qmp.execute("query-status", timeout: 5))?["status"]?.stringValue ?? "unknown"
        guard !state.withLock({ $0.pausing }) else { return }
        switch status {
        case "running", "postmigrate", "finish-migrate", "inmigrate", "shutdown":
            return
        case "io-error":
            let data = state.withLock { $0.blockError } ?? .null
            context.health.report(diskFault(data))
        case "guest-panicked":
            context.health.report(VouchError(.machineDown, "paused: the guest kernel panicked" + (context.console.panicLine.map { ": \($0)" } ?? ""),
                                             machine: context.name, outputTail: context.console.tail(lines: 30)))
        default:
            context.health.report(VouchError(.machineDown, "paused: QEMU stopped the guest (status \(status)) without Vouch asking",
                                             machine: context.name, outputTail: tail(qemuErrors)))
        }
    }

    /// "paused: disk I/O error on the root overlay (no space left in DIR)".
    func diskFault(_ data: JSONValue) -> VouchError {
        let device = data["device"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 } ?? data["node-name"]?.stringValue ?? "a disk"
        let what = device == "root" || device.hasSuffix("root") ? "the root overlay" : "disk \(device)"
        var reason = data["reason"]?.stringValue ?? "unknown reason"
        if data["nospace"]?.boolValue == true {
            let free = Self.freeSpace(context.stateDirectory).map { ", \($0) free" } ?? ""
            reason = "no space left in \(context.stateDirectory)\(free)"
        }
        let operation = data["operation"]?.stringValue.map { " while \($0 == "write" ? "writing" : "reading")" } ?? ""
        return VouchError(.machineDown, "paused: disk I/O error on \(what)\(operation) (\(reason))", machine: context.name,
                          outputTail: context.console.tail(lines: 20))
    }

    private static func freeSpace(_ path: String) -> String? {
        guard let attributes = try? FileManager.default.attributesOfFileSystem(forPath: path),
              let free = attributes[.systemFreeSize] as? NSNumber else { return nil }
        return ByteCountFormatter.string(fromByteCount: free.int64Value, countStyle: .file)
    }
}
