import Synchronization
import VouchSupport

/// What the VMM says about a machine, apart from what its guest says.
///
/// A backend that watches its VMM (QMP events, the process) reports a fault
/// here the moment the guest stops running on its own: paused on a disk
/// error, panicked, stopped without Vouch asking. Every waiting call then
/// fails at once with that reason, instead of at the end of its timeout:
/// the guest shell's stream is ended with the fault, and waits that do not
/// read the shell check `fault`.
package final class MachineHealth: Sendable {
    private struct State {
        var fault: VouchError?
        var streams: [ByteQueue] = []
    }

    private let state = Mutex(State())
    /// Resets of the guest it asked for itself (a reboot with rebooting
    /// allowed); not a fault, and kept across `reset`.
    private let resets = Mutex(0)

    package init() {}

    /// How many times the guest has reset itself since the machine was made.
    package var guestResets: Int { resets.withLock { $0 } }

    /// Counts a reset the guest asked for: its shell comes back with a new banner.
    package func noteGuestReset() {
        resets.withLock { $0 += 1 }
    }

    /// The fault reported since the last `reset`, if any.
    package var fault: VouchError? { state.withLock { $0.fault } }

    /// Records `fault` (the first one counts) and ends every watched stream with it.
    package func report(_ fault: VouchError) {
        let streams = state.withLock { s -> [ByteQueue] in
            guard s.fault == nil else { return [] }
            s.fault = fault
            return s.streams
        }
        streams.forEach { $0.finish(fault) }
    }

    /// Ends `stream` with the fault when one is reported (at once if one was).
    package func watch(_ stream: ByteQueue) {
        let fault = state.withLock { s -> VouchError? in
            s.streams.removeAll { $0.isFinished }
            s.streams.append(stream)
            return s.fault
        }
        if let fault { stream.finish(fault) }
    }

    /// Forgets the fault and the streams: the machine starts afresh.
    package func reset() {
        state.withLock { $0 = State() }
    }

    /// Throws the fault, if there is one.
    package func check() throws(VouchError) {
        if let fault { throw fault }
    }
}
