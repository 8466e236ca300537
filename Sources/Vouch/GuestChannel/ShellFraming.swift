/// The wire format Vouch speaks to a backdoor shell (bash or busybox ash).
///
/// Once per connection the host defines a shell function; each command is
/// then one line, `__vouch $'<command>' <nonce>`, and its answer is the
/// command's raw stdout followed by `RS VOUCH:<nonce>:<status> LF`.
///
/// - One round trip; the command runs in a subshell of the backdoor shell
///   (a fork, no exec), which keeps `set -euo pipefail` semantics and
///   protects the backdoor from `exit` and `cd`.
/// - Binary-safe: output is never re-encoded; the end marker carries a nonce
///   unique to the command, so output cannot forge it, and output without a
///   trailing newline is returned exactly.
/// - The command text travels ANSI-C quoted: only printable ASCII crosses
///   the tty, so no byte of a command can act as a terminal control character.
/// - Deadlines are enforced on the host; a timed-out command is interrupted
///   with the tty's interrupt character (set up by `setupScript`), and the
///   host then reads up to that command's marker, so the next command starts
///   in sync.
enum ShellFraming {
    static let banner: [UInt8] = Array("Spawning backdoor root shell...".utf8)
    static let markerStart: UInt8 = 0x1E
    static let markerTag: [UInt8] = Array("VOUCH:".utf8)
    static let interrupt: [UInt8] = [0x03]
    static let quit: [UInt8] = [0x1C]

    /// Defines `__vouch` and arms ^C / ^\ as signals for the command being run.
    /// The shell itself traps both, so it survives an interrupt.
    static func setupScript(nonce: String) -> [UInt8] {
        let script = """
            stty isig intr '^C' quit '^\\' susp undef noflsh 2>/dev/null; trap : INT QUIT; \
            __vouch() { ( __vouch_c=$1; set --; set -euo pipefail; eval "$__vouch_c" ) </dev/null; \
            printf '\\036VOUCH:%s:%s\\n' "$2" "$?"; }; printf '\\036VOUCH:%s:0\\n' \(nonce)

            """
        return Array(script.utf8)
    }

    /// The line that runs `command` and ends its output with `nonce`'s marker.
    static func commandLine(_ command: String, nonce: String) -> [UInt8] {
        var line: [UInt8] = Array("__vouch $'".utf8)
        line.reserveCapacity(command.utf8.count + 32)
        for byte in command.utf8 {
            switch byte {
            case UInt8(ascii: "\\"), UInt8(ascii: "'"):
                line.append(UInt8(ascii: "\\"))
                line.append(byte)
            case 0x20...0x7E:
                line.append(byte)
            default:
                line.append(UInt8(ascii: "\\"))
                line.append(contentsOf: Array(octal(byte).utf8))
            }
        }
        line.append(contentsOf: Array("' \(nonce)\n".utf8))
        return line
    }

    private static func octal(_ byte: UInt8) -> String {
        let digits = String(byte, radix: 8)
        return String(repeating: "0", count: 3 - digits.count) + digits
    }

    /// Where a command's answer ends in `buffer`.
    struct Match: Equatable {
        /// Bytes before this index are the command's output.
        let outputEnd: Int
        /// Bytes before this index (marker and newline included) are consumed.
        let end: Int
        let status: Int32
    }

    /// Finds the marker for `nonce` in `buffer`, scanning from `from`.
    ///
    /// Returns nil if the marker is not (completely) there yet; `nextScan`
    /// is where a later call can resume without missing a marker that
    /// straddles two reads.
    static func findMarker(nonce: String, in buffer: [UInt8], from: Int) -> (match: Match?, nextScan: Int) {
        let needle = [markerStart] + markerTag + Array("\(nonce):".utf8)
        var i = max(0, from)
        while let start = buffer[i...].firstIndex(of: markerStart) {
            if buffer.count - start < needle.count {
                return (nil, start)
            }
            if buffer[start..<start + needle.count].elementsEqual(needle) {
                let digitsStart = start + needle.count
                guard let newline = buffer[digitsStart...].firstIndex(of: UInt8(ascii: "\n")) else {
                    return (nil, start)
                }
                let text = String(decoding: buffer[digitsStart..<newline], as: UTF8.self)
                let status = Int32(text) ?? -1
                return (Match(outputEnd: start, end: newline + 1, status: status), newline + 1)
            }
            i = start + 1
        }
        return (nil, buffer.count)
    }
}
