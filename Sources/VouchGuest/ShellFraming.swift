/// The wire format Vouch speaks to a backdoor shell (bash).
///
/// Once per connection the host defines shell functions; each command is
/// then one line, `__vouch $'<command>' <nonce>`, and its answer is the
/// command's raw stdout followed by `RS VOUCH:<nonce>:<status>[:<flag>] LF`.
///
/// - One round trip; the command runs in a subshell of the backdoor shell
///   (a fork, no exec), which keeps `set -euo pipefail` semantics and
///   protects the backdoor from `exit` and `cd`.
/// - Binary-safe: output is never re-encoded; the end marker carries a nonce
///   unique to the command, so output cannot forge it, and output without a
///   trailing newline is returned exactly.
/// - The command text travels ANSI-C quoted: only printable ASCII crosses
///   the tty, so no byte of a command can act as a terminal control character.
/// - A command's output is what that command wrote. As in nixpkgs' driver,
///   the answer waits until every process the command started has closed
///   its stdout (`(sleep 1; echo LATE) &` returns `LATE`), so no byte can
///   land in a later command's output. Detecting that costs no process: the
///   subshell opens a FIFO for writing (inherited by everything it starts)
///   whose read end the backdoor keeps; when the subshell has exited and
///   the FIFO still has a writer, something was left behind, and only then
///   does the shell look in /proc for leftovers that hold its stdout and
///   wait for them (flag `w`: the host logs a warning).
/// - Deadlines are enforced on the host; a timed-out command is interrupted
///   with the tty's interrupt character (set up by `setupScript`), which
///   also stops the wait for leftovers and kills those holding stdout; the
///   host then reads up to that command's marker, so the next command
///   starts in sync.
package enum ShellFraming {
    package static let banner: [UInt8] = Array("Spawning backdoor root shell...".utf8)
    package static let markerStart: UInt8 = 0x1E
    package static let markerTag: [UInt8] = Array("VOUCH:".utf8)
    package static let interrupt: [UInt8] = [0x03]
    package static let quit: [UInt8] = [0x1C]

    /// Flags a marker can carry after the status.
    package enum Flag: UInt8, Sendable {
        /// The command left processes holding its stdout; the answer waited for them.
        case waited = 0x77  // w
        /// Answered by the plain framing: no detection of leftovers (no FIFO could be made).
        case plain = 0x70  // p
        /// Setup answer: leftovers are detected (a FIFO was made).
        case fifo = 0x66  // f
    }

    /// Defines the functions and arms ^C / ^\ as signals for the command
    /// being run. The shell itself traps both, so it survives an interrupt.
    /// Its answer's flag says whether leftovers are detected (`f`) or not (`p`).
    package static func setupScript(nonce: String) -> [UInt8] {
        Array((ttySettings + "; trap '__vouch_i=1' INT QUIT\n" + setup
               + "__vouch_fifo && printf '\\036VOUCH:%s:0:f\\n' \(nonce) || printf '\\036VOUCH:%s:0:p\\n' \(nonce)\n").utf8)
    }

    /// The tty settings the framing relies on: ^C and ^\ signal the running
    /// command, nothing suspends it, output is never flushed or stopped.
    package static let ttySettings = #"stty isig intr '^C' quit '^\' susp undef noflsh -tostop 2>/dev/null"#

    /// One line that gives the user an interactive `bash -i` on the console
    /// (cooked tty), then restores the framing's raw tty and answers `nonce`.
    /// One line, because whatever follows it in the tty's input would be read
    /// by the interactive shell.
    package static func interactiveLine(nonce: String) -> [UInt8] {
        Array("stty sane 2>/dev/null; bash -i 2>&1; stty raw -echo 2>/dev/null; \(ttySettings); printf '\\036VOUCH:%s:0\\n' \(nonce)\n".utf8)
    }

    // The functions, in bash. Names start with __vouch_ so commands cannot
    // clash with them; state lives in globals of the backdoor shell.
    // - __vouch_fifo: a fresh FIFO in a private directory (mkdir and mkfifo
    //   are the only programs run, and only here), its read end kept open.
    //   The directory is under $VOUCH_FIFO_DIR when the session sets it (an
    //   existing host, where it must go with the session), else /run.
    // - __vouch: run with stdin on fd 61 (/dev/null, opened once) and the
    //   FIFO's write end on fd 62, then check the FIFO: readable (EOF)
    //   means no writer is left; else __vouch_linger. Every syscall counts
    //   under TCG: redirections on the subshell, `set -… --` for two
    //   builtins, no closing of the read end in the subshell (six syscalls
    //   in bash for a `{var}<&-`), together cut the cost of the detection
    //   from about +20% to +8% of a round trip.
    // - __vouch_linger: scan /proc for processes holding the FIFO; while
    //   one of them also holds the shell's stdout, wait (or, once
    //   interrupted, kill them). A FIFO still held is replaced.
    // - __vouch_plain: the framing without detection.
    private static let setup = #"""
        __vouch_n=0 __vouch_F= __vouch_r= __vouch_d= __vouch_nofifo=
        exec 61</dev/null
        __vouch_fifo() {
          [ -z "$__vouch_nofifo" ] || return 1
          if [ -z "$__vouch_d" ] || [ ! -d "$__vouch_d" ]; then
            __vouch_d=
            for __vouch_t in ${VOUCH_FIFO_DIR:+"$VOUCH_FIFO_DIR"} /run /dev/shm "${TMPDIR:-/tmp}" /tmp; do
              mkdir -p -m 700 "$__vouch_t/vouch-shell-$$" 2>/dev/null && [ -O "$__vouch_t/vouch-shell-$$" ] && { __vouch_d=$__vouch_t/vouch-shell-$$; break; }
            done
            [ -n "$__vouch_d" ] || { __vouch_nofifo=1; return 1; }
          fi
          __vouch_n=$((__vouch_n+1))
          mkfifo -m 600 "$__vouch_d/w$__vouch_n" 2>/dev/null || { __vouch_nofifo=1; return 1; }
          [ -z "$__vouch_F" ] || rm -f "$__vouch_F" 2>/dev/null
          [ -z "$__vouch_r" ] || exec {__vouch_r}<&-
          __vouch_F=$__vouch_d/w$__vouch_n
          exec {__vouch_x}<>"$__vouch_F" {__vouch_r}<"$__vouch_F" {__vouch_x}>&-
        }
        __vouch_plain() { ( __vouch_c=$1; set --; set -euo pipefail; eval "$__vouch_c" ) </dev/null; printf '\036VOUCH:%s:%s:p\n' "$2" "$?"; }
        __vouch() {
          __vouch_i=
          [[ -p $__vouch_F ]] || __vouch_fifo || { __vouch_plain "$@"; return; }
          ( __vouch_c=$1; set -euo pipefail --; eval "$__vouch_c" ) <&61 62>"$__vouch_F"
          __vouch_s=$? __vouch_f=
          read -t 0 -u "$__vouch_r" || __vouch_linger
          printf '\036VOUCH:%s:%s%s\n' "$2" "$__vouch_s" "$__vouch_f"
        }
        __vouch_linger() {
          local p f h k held out pids
          while :; do
            held= out= pids=
            for p in /proc/[1-9]*; do
              [ "${p#/proc/}" != "$$" ] || continue
              h= k=
              for f in "$p"/fd/*; do
                if [ "$f" -ef "$__vouch_F" ]; then h=1; elif [ "$f" -ef /proc/$$/fd/1 ]; then k=1; fi
              done 2>/dev/null
              [ -n "$h" ] || continue
              held=1
              [ -n "$k" ] && { out=1; pids="$pids ${p#/proc/}"; }
            done
            [ -n "$out" ] || break
            __vouch_f=:w
            if [ -n "$__vouch_i" ]; then kill -KILL $pids 2>/dev/null; break; fi
            sleep 0.05 2>/dev/null || sleep 1
          done
          [ -z "$held" ] || __vouch_fifo || :
        }

        """#

    /// The line that runs `command` and ends its output with `nonce`'s marker.
    /// With `plain`, leftovers are not waited for (the framing before
    /// detection existed; kept to compare costs in benchmarks).
    package static func commandLine(_ command: String, nonce: String, plain: Bool = false) -> [UInt8] {
        var line: [UInt8] = Array((plain ? "__vouch_plain $'" : "__vouch $'").utf8)
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

    /// The line that answers with `nonce`'s marker using shell builtins
    /// only: proof that a shell is there and in sync (after a restore).
    package static func pingLine(nonce: String) -> [UInt8] {
        Array("printf '\\036VOUCH:%s:0\\n' \(nonce)\n".utf8)
    }

    /// Where a command's answer ends in a buffer.
    package struct Match: Equatable {
        /// Bytes before this index are the command's output.
        package let outputEnd: Int
        /// Bytes before this index (marker and newline included) are consumed.
        package let end: Int
        package let status: Int32
        package let flag: Flag?

        package init(outputEnd: Int, end: Int, status: Int32, flag: Flag? = nil) {
            self.outputEnd = outputEnd
            self.end = end
            self.status = status
            self.flag = flag
        }
    }

    /// Finds the marker for `nonce` in `bytes[from...]`.
    ///
    /// Returns nil if the marker is not (completely) there yet; `nextScan`
    /// is where a later call can resume without missing a marker that
    /// straddles two reads.
    package static func findMarker(nonce: String, in bytes: [UInt8], from: Int) -> (match: Match?, nextScan: Int) {
        findMarker(nonce: nonce, in: bytes[...], from: from)
    }

    /// `findMarker` on a slice; positions are the slice's own indices.
    package static func findMarker(nonce: String, in bytes: ArraySlice<UInt8>, from: Int) -> (match: Match?, nextScan: Int) {
        let needle = [markerStart] + markerTag + Array("\(nonce):".utf8)
        var i = max(bytes.startIndex, from)
        while i < bytes.endIndex, let start = bytes[i...].firstIndex(of: markerStart) {
            if bytes.endIndex - start < needle.count {
                return (nil, start)
            }
            if bytes[start..<start + needle.count].elementsEqual(needle) {
                let digitsStart = start + needle.count
                guard let newline = bytes[digitsStart...].firstIndex(of: UInt8(ascii: "\n")) else {
                    return (nil, start)
                }
                let fields = bytes[digitsStart..<newline].split(separator: UInt8(ascii: ":"), omittingEmptySubsequences: false)
                let status = fields.first.flatMap { Int32(String(decoding: $0, as: UTF8.self)) } ?? -1
                let flag = fields.count > 1 ? fields[1].first.flatMap(Flag.init(rawValue:)) : nil
                return (Match(outputEnd: start, end: newline + 1, status: status, flag: flag), newline + 1)
            }
            i = start + 1
        }
        return (nil, bytes.endIndex)
    }
}
