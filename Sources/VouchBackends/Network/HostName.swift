/// The host name a node runs with, derived from its name as a NixOS test
/// node's is: NixOS sets `networking.hostName` to the node's name, and
/// systemd, setting it at boot, leaves out what a host name cannot hold, so
/// node `one_two` runs as `onetwo` (nixpkgs' own `node-name` test checks it).
package enum HostName {
    /// The longest host name systemd keeps.
    static let maxLength = 64

    /// `name` without the characters a host name cannot have: only ASCII
    /// letters, digits, `-` and `.` stay; no `.` or `-` starts it or follows
    /// a `.`, no `.` follows a `-`, and a trailing `-` or `.` goes.
    package static func forNode(_ name: String) -> String {
        var out: [Character] = []
        for c in name where out.count < maxLength {
            switch c {
            case ".":
                if let last = out.last, last != ".", last != "-" { out.append(c) }
            case "-":
                if let last = out.last, last != "." { out.append(c) }
            default:
                if c.isASCII, c.isLetter || c.isNumber { out.append(c) }
            }
        }
        if let last = out.last, last == "-" || last == "." { out.removeLast() }
        return String(out)
    }
}
