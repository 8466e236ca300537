import Foundation
import Glibc
import Synchronization
import Vouch
import VouchBackends
import VouchGuest
import VouchSupport

/// A `Backend` whose "guest" is a local `bash` on a pseudo-terminal, set up
/// the way NixOS's `backdoor.service` sets up its shell on `/dev/hvc0`; for
/// unit tests of everything above the guest channel (`GuestShell`, `Machine`,
/// the waits) without booting a VM.
///
/// The guest process is a session leader whose controlling terminal is the
/// pty slave. Its stdin and stdout are the slave (the virtconsole), its
/// stderr is a pipe fed to `context.console` (the serial console). It runs
/// `stty raw -echo`, prints `Spawning backdoor root shell...`, `cd /tmp`,
/// then `PS1="" exec bash --norc /dev/tty`: the backdoor shell reads its
/// script from the terminal, exactly like `bash --norc /dev/hvc0`. The host
/// side reads the pty master with an `FDReader` and writes it with
/// `writeAll`, so `GuestShell` sees the same byte stream and tty behaviour
/// (raw mode, `isig`, ^C as SIGINT to the foreground process group) as over
/// QEMU's virtconsole.
///
/// What differs from a VM, honestly:
/// - The guest *is* the host: same kernel, users, processes, network and
///   file system. The one exception is `/tmp`: when private mount namespaces
///   are available (`isolationAvailable()`, true for root or where
///   unprivileged user namespaces are allowed), the guest runs under
///   `unshare --mount` with its own `/tmp` (`<stateDirectory>/guest-tmp` on
///   the host), and `/tmp/shared` inside it is a bind mount of
///   `context.sharedDirectory`, as the 9p share is in a NixOS test VM. So
///   `copyFromHost`/`copyFromMachine` take their real code paths. Without
///   namespaces the guest's `/tmp` is the host's and `/tmp/shared` does not
///   exist.
/// - There is no boot, kernel, systemd or reboot: `allowReboot` does
///   nothing, and a `reboot`/`poweroff` command does whatever it does on the
///   host, so tests must not send them. `sendKeys` is unsupported.
/// - `crash()` is SIGKILL to the guest's process group.
package final class PTYShellBackend: Backend, Crashable, FileTransfer {
    package let kind = "pty-fake"
    package let context: MachineContext
    package let options: Options

    /// Knobs for tests.
    package struct Options: Sendable {
        /// Bytes the guest prints on the virtconsole before the banner
        /// (like kernel or firmware noise on a real console).
        package var preamble: [UInt8] = []
        /// Seconds the guest waits before printing anything, to simulate a boot.
        package var bootDelay: Double = 0
        /// Give the guest a private `/tmp` with `/tmp/shared` (if possible, see the type's documentation).
        package var privateTmp = true

        package init(preamble: [UInt8] = [], bootDelay: Double = 0, privateTmp: Bool = true) {
            self.preamble = preamble
            self.bootDelay = bootDelay
            self.privateTmp = privateTmp
        }
    }

    private struct State {
        var process: ChildProcess?
        var pumps: [Task<Void, Never>] = []
        var isolated = false
    }

    private let state = Mutex(State())

    package init(context: MachineContext, options: Options = Options()) {
        self.context = context
        self.options = options
    }

    /// The guest's `/tmp` as seen from the host, when it has a private one.
    package var guestTmp: String? {
        state.withLock { $0.isolated } ? context.stateDirectory + "/guest-tmp" : nil
    }

    package var exitStatus: ExitStatus? { state.withLock { $0.process?.exitStatus } }

    /// The guest's pid (the backdoor shell), or nil before `start()`.
    package var pid: pid_t? { state.withLock { $0.process?.pid } }

    package func start() async throws(VouchError) -> GuestChannel {
        let name = context.name
        let fm = FileManager.default
        try vouching("cannot create the fake guest's directories", machine: name) {
            try fm.createDirectory(atPath: context.stateDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        let isolate = options.privateTmp ? await Self.isolationAvailable() : false
        if isolate {
            try vouching("cannot create the fake guest's /tmp", machine: name) {
                try fm.createDirectory(atPath: context.stateDirectory + "/guest-tmp/shared", withIntermediateDirectories: true)
                try fm.createDirectory(atPath: context.sharedDirectory, withIntermediateDirectories: true)
            }
        }

        let (master, slave) = try PTY.open()
        var env = [
            "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": isolate ? "/tmp" : context.stateDirectory,
            "USER": "root", "PAGER": "", "TERM": "dumb", "LC_ALL": "C",
            "VOUCH_FAKE_PREAMBLE": String(decoding: options.preamble, as: UTF8.self),
            "VOUCH_FAKE_DELAY": String(options.bootDelay),
            // The fake guest is the host: keep the shell's FIFO in its state directory, which goes with it
            // (a private /tmp is inside that directory).
            "VOUCH_FIFO_DIR": isolate ? "/tmp" : context.stateDirectory,
        ]
        if isolate {
            env["VOUCH_FAKE_TMP"] = context.stateDirectory + "/guest-tmp"
            env["VOUCH_FAKE_SHARED"] = context.sharedDirectory
        }
        let bash = ["bash", "--norc", "--noprofile", "-c", Self.script]
        let argv = isolate ? Self.unsharePrefix + bash : bash
        let process: ChildProcess
        do throws(VouchError) {
            process = try ChildProcess(argv[0], Array(argv.dropFirst()), environment: env,
                                       workingDirectory: context.stateDirectory, pipes: [.stderr],
                                       stdoutFD: slave, controllingTerminal: true)
        } catch {
            close(master)
            close(slave)
            throw error
        }
        // Only the guest may hold the slave: when it exits, reads of the master fail with EIO (hang-up).
        close(slave)
        let reader = FDReader(fd: master, name: "pty-\(name)")
        let pumps = [context.console.pump(process.stderr!.queue)]
        state.withLock { s in
            s.process = process
            s.pumps = pumps
            s.isolated = isolate
        }
        context.log.log("started fake guest bash on a pty (pid \(process.pid)\(isolate ? ", private /tmp" : ""))", machine: name)
        let channel = GuestChannel(reader: reader, writeFD: dup(master), name: name)
        context.health.watch(channel.input)
        return channel
    }

    package func waitForExit() async throws(VouchError) -> ExitStatus {
        guard let process = state.withLock({ $0.process }) else {
            throw VouchError(.bootFailed, "the fake guest was never started", machine: context.name)
        }
        return try await process.waitForExit()
    }

    package func diagnose() async -> String? {
        state.withLock { $0.process }?.stateNote(as: "the fake guest")
    }

    package func crash() async throws(VouchError) {
        guard let process = state.withLock({ $0.process }) else { return }
        await process.kill()
    }

    /// The fake's `/tmp/shared` is live when it has a private `/tmp`.
    package func pushShared(_ item: String, shell: GuestShell) async throws(VouchError) {
        guard guestTmp != nil else {
            throw VouchError(.unsupported, "the pty fake has no private /tmp, so no /tmp/shared (no mount namespaces here)", machine: context.name)
        }
    }

    package func pullShared(_ item: String, shell: GuestShell) async throws(VouchError) {
        try await pushShared(item, shell: shell)
    }

    package func stop(keepState: Bool) async {
        let (process, pumps) = state.withLock { s in
            defer { s.pumps = [] }
            return (s.process, s.pumps)
        }
        if let process { await process.kill() }
        _ = try? await withDeadline(seconds: 1) { for pump in pumps { await pump.value } }
        if !keepState { try? FileManager.default.removeItem(atPath: context.stateDirectory) }
    }

    // MARK: - Setup

    /// What the guest runs; the tail mirrors nixpkgs' backdoor.service.
    package static let script = """
        if [ -n "${VOUCH_FAKE_TMP:-}" ]; then
          mount --bind "$VOUCH_FAKE_SHARED" "$VOUCH_FAKE_TMP/shared" && mount --rbind "$VOUCH_FAKE_TMP" /tmp \
            || { echo "cannot set up the private /tmp" >&2; exit 1; }
        fi
        unset VOUCH_FAKE_TMP VOUCH_FAKE_SHARED
        exec </dev/tty >/dev/tty
        stty raw -echo
        [ "$VOUCH_FAKE_DELAY" = 0.0 ] || sleep "$VOUCH_FAKE_DELAY"
        printf '%s' "$VOUCH_FAKE_PREAMBLE"
        unset VOUCH_FAKE_PREAMBLE VOUCH_FAKE_DELAY
        echo "Spawning backdoor root shell..."
        cd /tmp
        PS1="" exec bash --norc /dev/tty
        """

    private static var unsharePrefix: [String] {
        getuid() == 0
            ? ["unshare", "--mount", "--propagation", "private", "--"]
            : ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private", "--"]
    }

    private static let isolation = Mutex<Bool?>(nil)

    /// Whether the guest can get a private `/tmp` with `/tmp/shared` (a
    /// private mount namespace via `unshare`). Probed once per process.
    package static func isolationAvailable() async -> Bool {
        if let known = isolation.withLock({ $0 }) { return known }
        var ok = false
        if let probe = try? ChildProcess(unsharePrefix[0], Array(unsharePrefix.dropFirst()) + ["true"], pipes: []) {
            ok = (try? await probe.waitForExit(until: Deadline(seconds: 10))) == .exited(0)
        }
        isolation.withLock { $0 = ok }
        return ok
    }
}
