import Foundation
import Glibc
import Synchronization

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
final class PTYShellBackend: Backend {
    let kind = "pty-fake"
    let context: MachineContext
    let options: Options

    /// Knobs for tests.
    struct Options: Sendable {
        /// Bytes the guest prints on the virtconsole before the banner
        /// (like kernel or firmware noise on a real console).
        var preamble: [UInt8] = []
        /// Seconds the guest waits before printing anything, to simulate a boot.
        var bootDelay: Double = 0
        /// Give the guest a private `/tmp` with `/tmp/shared` (if possible, see the type's documentation).
        var privateTmp = true

        init(preamble: [UInt8] = [], bootDelay: Double = 0, privateTmp: Bool = true) {
            self.preamble = preamble
            self.bootDelay = bootDelay
            self.privateTmp = privateTmp
        }
    }

    private struct State {
        var process: ChildProcess?
        var writeFD: Int32 = -1
        var pumps: [Task<Void, Never>] = []
        var isolated = false
    }

    private let state = Mutex(State())

    init(context: MachineContext, options: Options = Options()) {
        self.context = context
        self.options = options
    }

    /// The guest's `/tmp` as seen from the host, when it has a private one.
    var guestTmp: String? {
        state.withLock { $0.isolated } ? context.stateDirectory + "/guest-tmp" : nil
    }

    var exitStatus: ExitStatus? { state.withLock { $0.process?.exitStatus } }

    /// The guest's pid (the backdoor shell), or nil before `start()`.
    var pid: pid_t? { state.withLock { $0.process?.pid } }

    func start() async throws -> GuestChannel {
        let name = context.name
        let fm = FileManager.default
        try fm.createDirectory(atPath: context.stateDirectory, withIntermediateDirectories: true,
                               attributes: [.posixPermissions: 0o700])
        let isolate = options.privateTmp ? await Self.isolationAvailable() : false
        if isolate {
            try fm.createDirectory(atPath: context.stateDirectory + "/guest-tmp/shared", withIntermediateDirectories: true)
            try fm.createDirectory(atPath: context.sharedDirectory, withIntermediateDirectories: true)
        }

        let (master, slave) = try Self.openPTY()
        var env = [
            "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": isolate ? "/tmp" : context.stateDirectory,
            "USER": "root", "PAGER": "", "TERM": "dumb", "LC_ALL": "C",
            "VOUCH_FAKE_PREAMBLE": String(decoding: options.preamble, as: UTF8.self),
            "VOUCH_FAKE_DELAY": String(options.bootDelay),
        ]
        if isolate {
            env["VOUCH_FAKE_TMP"] = context.stateDirectory + "/guest-tmp"
            env["VOUCH_FAKE_SHARED"] = context.sharedDirectory
        }
        let bash = ["bash", "--norc", "--noprofile", "-c", Self.script]
        let argv = isolate ? Self.unsharePrefix + bash : bash
        let process: ChildProcess
        do {
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
        let writeFD = dup(master)
        let reader = FDReader(fd: master, name: "pty-\(name)")
        let input = ByteQueue()
        let console = context.console
        let pumps = [
            Task {
                do {
                    while let chunk = try await reader.queue.next() { input.append(chunk) }
                    input.finish()
                } catch let error as SystemError where error.errno == EIO {
                    input.finish()  // the slave side hung up: end of stream, as a closed virtconsole socket
                } catch {
                    input.finish(error)
                }
            },
            Task {
                while let chunk = try? await process.stderr!.queue.next() { console.feed(chunk) }
                console.flush()
            },
        ]
        state.withLock { s in
            s.process = process
            s.writeFD = writeFD
            s.pumps = pumps
            s.isolated = isolate
        }
        context.log.log("started fake guest bash on a pty (pid \(process.pid)\(isolate ? ", private /tmp" : ""))", machine: name)
        return GuestChannel(
            input: input,
            send: { try writeAll(fd: writeFD, $0) },
            close: { process.signal(SIGKILL) })
    }

    func waitForExit() async throws -> ExitStatus {
        guard let process = state.withLock({ $0.process }) else {
            throw VouchError(.bootFailed, "the fake guest was never started", machine: context.name)
        }
        return try await process.waitForExit()
    }

    func allowReboot(_ allowed: Bool) async throws {}

    func crash() async throws {
        guard let process = state.withLock({ $0.process }) else { return }
        process.signal(SIGKILL)
        _ = try? await withDeadline(seconds: 5) { try await process.waitForExit() }
    }

    func forwardPort(hostPort: Int, guestPort: Int) async throws {
        throw VouchError(.unsupported, "the pty fake has no network to forward into", machine: context.name)
    }

    func setLinks(up: Bool) async throws {
        throw VouchError(.unsupported, "the pty fake has no network links", machine: context.name)
    }

    func sendKeys(_ keys: [String]) async throws {
        throw VouchError(.unsupported, "the pty fake backend has no keyboard (send-key \(keys.joined(separator: "-")))",
                         machine: context.name)
    }

    func stop(keepState: Bool) async {
        let (process, writeFD, pumps) = state.withLock { s in
            defer { s.writeFD = -1; s.pumps = [] }
            return (s.process, s.writeFD, s.pumps)
        }
        if let process {
            process.signal(SIGKILL)
            _ = try? await withDeadline(seconds: 5) { try await process.waitForExit() }
        }
        if writeFD >= 0 { close(writeFD) }
        for pump in pumps { _ = try? await withDeadline(seconds: 1) { await pump.value } }
        if !keepState { try? FileManager.default.removeItem(atPath: context.stateDirectory) }
    }

    // MARK: - Setup

    /// What the guest runs; the tail mirrors nixpkgs' backdoor.service.
    static let script = """
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
    static func isolationAvailable() async -> Bool {
        if let known = isolation.withLock({ $0 }) { return known }
        var ok = false
        if let probe = try? ChildProcess(unsharePrefix[0], Array(unsharePrefix.dropFirst()) + ["true"], pipes: []) {
            ok = (try? await withDeadline(seconds: 10) { try await probe.waitForExit() }) == .exited(0)
        }
        isolation.withLock { $0 = ok }
        return ok
    }

    /// A new pty pair (master, slave), both close-on-exec; the slave is not
    /// our controlling terminal.
    static func openPTY() throws -> (master: Int32, slave: Int32) {
        let master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard master >= 0 else { throw VouchError(.spawnFailed, "cannot open a pseudo-terminal: \(SystemError("open /dev/ptmx"))") }
        var name = [CChar](repeating: 0, count: 128)
        guard PTYCalls.grantpt(master) == 0, PTYCalls.unlockpt(master) == 0,
              PTYCalls.ptsname_r(master, &name, name.count) == 0
        else {
            let error = SystemError("unlockpt/ptsname_r")
            close(master)
            throw VouchError(.spawnFailed, "cannot set up a pseudo-terminal: \(error)")
        }
        let slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard slave >= 0 else {
            let error = SystemError("open \(String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))")
            close(master)
            throw VouchError(.spawnFailed, "cannot open the pseudo-terminal slave: \(error)")
        }
        return (master, slave)
    }
}

/// glibc's pty functions, which the Glibc module does not import (they need
/// `_XOPEN_SOURCE`), looked up at run time.
private enum PTYCalls {
    typealias FDCall = @convention(c) (Int32) -> Int32
    typealias NameCall = @convention(c) (Int32, UnsafeMutablePointer<CChar>?, Int) -> Int32

    nonisolated(unsafe) static let handle = dlopen(nil, RTLD_NOW)

    static func symbol<T>(_ name: String, as type: T.Type) -> T {
        guard let pointer = dlsym(handle, name) else { fatalError("libc has no \(name)") }
        return unsafeBitCast(pointer, to: type)
    }

    static let grantpt = symbol("grantpt", as: FDCall.self)
    static let unlockpt = symbol("unlockpt", as: FDCall.self)
    static let ptsname_r = symbol("ptsname_r", as: NameCall.self)
}
