import VouchGuest
import VouchSupport

// What only some backends can do. A backend adopts the protocols it
// implements for real; `Machine` looks a capability up with `as?` and,
// when it is missing, throws one clear `.unsupported` error naming the
// backend (plus the provider's explanation, `BackendProvider.whyMissing`).
// A method here may still refuse for a reason of this machine's setup (a
// start-script VM cannot be snapshotted), saying so.

/// The names capabilities go by in messages and in `whyMissing`.
package enum Capability: String, Sendable, CaseIterable {
    case power = "power control"
    case crash = "crash"
    case links = "network links"
    case portForwarding = "port forwarding"
    case keys = "keyboard input"
    case screen = "a screen"
    case consoleInput = "serial console input"
    case monitor = "a QEMU monitor"
    case snapshots = "snapshots"
    case files = "file transfer"
}

/// What `shutdown`, `reboot` and `crash` ask for, checked before anything changes.
package enum PowerOperation: String, Sendable {
    case shutdown, reboot
}

/// The guest may power off (`shutdown`) and reboot, and the backend follows.
package protocol PowerControl: Backend {
    /// Lets the next guest reboot reset the machine instead of ending it.
    /// - Throws: `VouchError` from the control channel.
    func allowReboot(_ allowed: Bool) async throws(VouchError)

    /// Throws if this machine's setup forbids `operation` (an existing host
    /// without permission), before `Machine` touches anything.
    func permit(_ operation: PowerOperation) throws(VouchError)

    /// The guest command that powers the machine off and ends its process.
    var powerOffCommand: String { get }
}

extension PowerControl {
    /// Permitted by default.
    package func permit(_ operation: PowerOperation) throws(VouchError) {}
    /// `poweroff`, except where the VMM ends on a reboot instead.
    package var powerOffCommand: String { "poweroff" }
}

/// The machine can be stopped abruptly, like pulling the power cord.
package protocol Crashable: Backend {
    /// Stops the guest at once; returns when its process is gone.
    /// - Throws: `VouchError` from the control channel (the process is gone either way).
    func crash() async throws(VouchError)
}

/// The machine's network links can be cut and restored.
package protocol LinkControl: Backend {
    /// Cuts (`up == false`) or restores every network link of the machine.
    func setLinks(up: Bool) async throws(VouchError)
}

/// A host TCP port can be made to reach a guest port.
package protocol PortForwarding: Backend {
    /// Makes `hostPort` on the host's loopback reach `guestPort` in the guest.
    /// - Throws: `.other` with the cause when the port is taken or the VMM refuses.
    func forwardPort(hostPort: Int, guestPort: Int) async throws(VouchError)
}

/// The guest has a keyboard the host can type on.
package protocol KeyInput: Backend {
    /// Sends a key combination, e.g. `["ctrl", "alt", "delete"]`.
    func sendKeys(_ keys: [String]) async throws(VouchError)
}

/// The VMM shows the guest's display and can capture it.
package protocol ScreenCapture: Backend {
    /// Whether this machine was given a display device (a failing test
    /// photographs the ones that were).
    var hasDisplay: Bool { get }

    /// Writes what the display shows now to `path` as a PNG.
    /// - Throws: `.unsupported` naming what is missing when this machine has
    ///   no display device; `.qmpError`/`.other` when the capture fails.
    func screenshot(toPNG path: String) async throws(VouchError)
}

/// The guest's serial console reads what the host writes.
package protocol ConsoleInput: Backend {
    /// Writes `bytes` to the console's input, as if typed on a serial terminal.
    /// - Throws: `.machineDown` when the VMM is gone; `.timeout` when it does
    ///   not read them within a few seconds.
    func sendConsole(_ bytes: [UInt8]) async throws(VouchError)
}

/// The VMM has QEMU's monitors: the human monitor and QMP.
package protocol MonitorAccess: Backend {
    /// Runs a monitor command (e.g. `info status`) and returns its output.
    func monitorCommand(_ command: String) async throws(VouchError) -> String

    /// Runs a human monitor command and returns everything a client of the
    /// monitor socket reads for it: the line editor's echo, the output (CR
    /// LF) and the next `(qemu) ` prompt, as nixpkgs' `send_monitor_command`.
    func monitorTranscript(_ command: String) async throws(VouchError) -> String

    /// Sends a QMP command and returns QEMU's whole reply, `{"return": …}`
    /// or `{"error": {"class": …, "desc": …}}` (a refusal is not an error).
    func qmpReply(_ command: String, arguments: JSONValue?) async throws(VouchError) -> JSONValue

    /// The next QMP event this machine's QEMU sent that the script has not
    /// read yet, waiting up to `timeout` seconds; nil if none came.
    func nextQMPEvent(timeout: Double) async throws(VouchError) -> JSONValue?
}

/// Files can be copied between the host and the guest through the run's
/// shared directory (live for VMs and containers, copied for remote hosts
/// and for VMs without a shared file system).
package protocol FileTransfer: Backend {
    /// Where the guest sees the host's shared directory.
    var guestSharedDirectory: String { get }
    /// Makes `item` (a name inside the shared directory) visible to the
    /// guest; `shell` is the machine's backdoor shell, for backends that copy through it.
    func pushShared(_ item: String, shell: GuestShell) async throws(VouchError)
    /// Brings `item` back from the guest into the host's shared directory.
    func pullShared(_ item: String, shell: GuestShell) async throws(VouchError)
}

extension FileTransfer {
    /// VMs mount the share and containers bind-mount it here.
    package var guestSharedDirectory: String { "/tmp/shared" }
    /// A live share: nothing to copy.
    package func pushShared(_ item: String, shell: GuestShell) async throws(VouchError) {}
    /// A live share: nothing to copy.
    package func pullShared(_ item: String, shell: GuestShell) async throws(VouchError) {}
}

/// The running guest can be saved and brought back later, any number of times.
///
/// The steps are separate so that several machines can be paused together
/// before any is saved, and resumed together after all are restored:
/// `prepareSnapshot` (guest commands) → shell held → `pause` → `saveSnapshot`
/// → `resume` → shell released → `commandsAfterResume`. A restore is
/// `restoreSnapshot` (paused) → `resume` → `commandsAfterResume`.
package protocol Snapshotting: Backend {
    /// Gets the guest ready to be saved, through its shell (QEMU takes the
    /// guest's 9p mounts down: it cannot migrate them).
    /// - Throws: `VouchError` saying what in the guest is in the way.
    func prepareSnapshot(_ shell: GuestShell) async throws(VouchError)

    /// Freezes the guest's CPUs and devices.
    func pause() async throws(VouchError)

    /// Lets a paused (or just restored) guest run again.
    func resume() async throws(VouchError)

    /// Writes the paused guest's complete state (devices, RAM, disks, and
    /// what `prepareSnapshot` changed) into the existing, empty `directory`.
    /// The guest stays paused.
    func saveSnapshot(to directory: String) async throws(VouchError)

    /// Replaces the running guest with the one saved in `directory`, paused,
    /// and returns the channel to its (still running) backdoor shell, or nil
    /// where the restore ends the shell's connection (vsock connections are
    /// reset): `shellAfterRestore` then connects to that shell again once
    /// the guest runs.
    /// - Throws: `.bootFailed` with the reason when the snapshot cannot be
    ///   loaded; the machine is then down.
    func restoreSnapshot(from directory: String) async throws(VouchError) -> GuestChannel?

    /// A new connection to the backdoor shell of the restored, resumed
    /// guest (the same shell, framing installed), for backends whose
    /// `restoreSnapshot` returned nil.
    /// - Throws: `.bootFailed` when the guest's listener does not answer.
    func shellAfterRestore(until deadline: Deadline) async throws(VouchError) -> GuestChannel

    /// Guest commands that undo `prepareSnapshot` once the guest runs again,
    /// after a save (`directory` nil) or a restore from `directory`. `Machine`
    /// runs them in one go (with the clock reset after a restore): each exec
    /// in a freshly restored TCG guest is slow.
    func commandsAfterResume(restoredFrom directory: String?) -> [String]

    /// Everything outside the snapshot that a restored guest depends on
    /// (images, command line, memory, VMM version...), one fact per line,
    /// without per-run paths. Equal keys mean a snapshot can be reused.
    /// - Throws: `.unsupported` where snapshots cannot be reused.
    func snapshotKey() async throws(VouchError) -> String
}

extension Snapshotting {
    /// Only backends whose restore returns no channel are asked.
    package func shellAfterRestore(until deadline: Deadline) async throws(VouchError) -> GuestChannel {
        throw VouchError(.bootFailed, "the \(kind) backend keeps its shell across a restore")
    }
}
