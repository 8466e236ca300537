import VouchSupport

/// The `ssh` command lines of an SSH machine, apart from process handling so
/// unit tests can check them. Every connection goes through one control
/// master (`ControlPath` in the machine's state directory): a command, a
/// copy or a port forward never pays for a new handshake.
struct SSHCommandLine: Sendable, Equatable {
    var settings: SSHSettings
    /// The control socket (in the machine's private state directory).
    var controlPath: String

    /// Options every invocation shares. `BatchMode` turns a password or
    /// passphrase prompt into an error instead of a hang.
    func common() -> [String] {
        var a = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5",
                 "-o", "ServerAliveCountMax=3", "-o", "ControlPath=\(controlPath)"]
        if let port = settings.port { a += ["-p", "\(port)"] }
        if let user = settings.user { a += ["-l", user] }
        if let identity = settings.identityFile { a += ["-i", identity, "-o", "IdentitiesOnly=yes"] }
        switch settings.knownHosts {
        case .strict:
            a += ["-o", "StrictHostKeyChecking=yes"]
        case .acceptNew:
            a += ["-o", "StrictHostKeyChecking=accept-new"]
        case .off:
            a += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
        }
        if let file = settings.knownHostsFile, settings.knownHosts != .off { a += ["-o", "UserKnownHostsFile=\(file)"] }
        return a + settings.extraArgs
    }

    /// The control master, in the foreground so it is Vouch's child (and
    /// dies with it).
    func master() -> [String] {
        common() + ["-M", "-N", "-o", "ControlPersist=no", settings.host]
    }

    /// Asks the master whether it is up (`ssh -O check`).
    func check() -> [String] {
        common() + ["-O", "check", settings.host]
    }

    /// Ends the master.
    func exitMaster() -> [String] {
        common() + ["-O", "exit", settings.host]
    }

    /// Adds a local forward 127.0.0.1:`hostPort` → the host's 127.0.0.1:`guestPort` to the master.
    func forward(hostPort: Int, guestPort: Int) -> [String] {
        common() + ["-O", "forward", "-L", "127.0.0.1:\(hostPort):127.0.0.1:\(guestPort)", settings.host]
    }

    /// Runs `command` (a remote shell command line) over the master.
    func run(_ command: String) -> [String] {
        common() + ["-o", "ControlMaster=no", settings.host, command]
    }

    /// The backdoor session: a remote pty (`-tt`) so ^C interrupts a command
    /// exactly as on a VM's console; bash reads its commands from that tty.
    /// stderr goes to `<remoteDirectory>/stderr`, which `stderrTail` streams.
    func session(remoteDirectory: String) -> [String] {
        common() + ["-tt", "-o", "ControlMaster=no", settings.host,
                    "exec bash --norc --noprofile -c \(shellQuote(Self.sessionScript)) vouch-backdoor \(shellQuote(remoteDirectory))"]
    }

    /// Streams the session's stderr into the machine's console log.
    func stderrTail(remoteDirectory: String) -> [String] {
        run("exec tail -n +1 -F \(shellQuote(remoteDirectory + "/stderr")) 2>/dev/null")
    }

    static let sessionScript = """
        d=$1
        mkdir -p "$d/shared" && chmod 700 "$d" || exit 1
        exec 2>>"$d/stderr"
        stty raw -echo
        echo "Spawning backdoor root shell..."
        cd /tmp
        export PAGER= VOUCH_FIFO_DIR="$d"
        PS1="" exec bash --norc /dev/tty
        """

    /// A one-line reason for a failed connection, from ssh's stderr.
    static func diagnose(_ stderr: String) -> String {
        let text = stderr.lowercased()
        if text.contains("host key verification failed") || text.contains("remote host identification has changed")
            || text.contains("no ed25519 host key is known") || text.contains("host key is known")
        {
            return "the host key was not accepted (knownHosts policy; add the key to known_hosts, or use \"knownHosts\": \"accept-new\"/\"off\" for throwaway hosts)"
        }
        if text.contains("permission denied") || text.contains("too many authentication failures") {
            return "authentication failed (check user and identityFile; BatchMode is on, so no password prompts)"
        }
        if text.contains("connection refused") || text.contains("timed out") || text.contains("no route to host")
            || text.contains("could not resolve") || text.contains("network is unreachable") || text.contains("connection closed")
        {
            return "the host is unreachable"
        }
        return "ssh failed"
    }
}
