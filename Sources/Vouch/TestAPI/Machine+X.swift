import Foundation
import VouchSupport

extension Machine {
    /// Waits until the guest reached its graphical target and the X server's
    /// socket `/tmp/.X11-unix/X0` exists (nixpkgs' `wait_for_x`).
    /// - Throws: `.timeout` saying which of the two was missing.
    public func waitForX(timeout: Double = 900, file: String = #filePath, line: Int = #line) async throws(VouchError) {
        log.log("waiting for the X11 server", machine: name)
        let check = "systemctl is-active --quiet graphical.target"
            + " || journalctl -b SYSLOG_IDENTIFIER=systemd | grep -q 'Reached target.*[Gg]raphical'"
        try await poll("the X11 server", timeout: timeout, location: .init(file: file, line: line)) { deadline throws(VouchError) in
            guard try await self.execute(check, timeout: deadline.remaining, file: file, line: line).status == 0 else {
                return .notYet(seen: "the graphical target is not reached")
            }
            guard try await self.execute("test -e /tmp/.X11-unix/X0", timeout: deadline.remaining, file: file, line: line).status == 0 else {
                return .notYet(seen: "graphical target reached, but /tmp/.X11-unix/X0 does not exist")
            }
            return .done
        }
    }

    /// The names of the X display's windows, from `xwininfo -root -tree`.
    /// - Throws: `.unsupported` when the guest has no `xwininfo` (Debian:
    ///   x11-utils); `.commandFailed` when X does not answer.
    public func windowNames(file: String = #filePath, line: Int = #line) async throws(VouchError) -> [String] {
        guard try await execute("command -v xwininfo", timeout: 30, file: file, line: line).status == 0 else {
            throw VouchError(.unsupported, "the guest has no xwininfo to list windows with (Debian: x11-utils)", machine: name,
                             location: .init(file: file, line: line))
        }
        let tree = try await succeed("DISPLAY=${DISPLAY:-:0} xwininfo -root -tree", timeout: 60, file: file, line: line)
        return Self.windowNames(inTree: tree)
    }

    /// The quoted names in `xwininfo -tree` output (`0x… "name": …`).
    static func windowNames(inTree tree: String) -> [String] {
        tree.split(separator: "\n").compactMap { line in
            guard let hex = line.range(of: "0x"), let open = line[hex.upperBound...].firstIndex(of: "\""),
                  line[hex.upperBound..<open].allSatisfy({ $0.isHexDigit || $0 == " " }) else { return nil }
            let rest = line[line.index(after: open)...]
            guard let close = rest.firstIndex(of: "\"") else { return nil }
            return String(rest[..<close])
        }
    }

    /// Waits until a window whose name matches `regex` exists.
    /// - Throws: `.timeout` listing the windows last seen; as `windowNames`.
    public func waitForWindow(_ regex: String, timeout: Double = 900, file: String = #filePath, line: Int = #line) async throws(VouchError) {
        let pattern = try Self.regex(regex, machine: name)
        log.log("waiting for a window matching \"\(regex)\"", machine: name)
        try await poll("a window matching \"\(regex)\"", timeout: timeout, location: .init(file: file, line: line)) { _ throws(VouchError) in
            let names = try await self.windowNames(file: file, line: line)
            return names.contains { Self.matches(pattern, $0) } ? .done : .notYet(seen: "windows: " + names.joined(separator: ", "))
        }
    }
}
