import Foundation
import VouchSupport

/// What a microVM backend boots: a kernel, its initrd and root disk, and
/// the command line, resolved from a Vouch image or given files. Shared by
/// the firecracker and cloud-hypervisor backends.
package struct MicroVMGuest: Sendable, Equatable {
    package var kernel: String
    package var initrd: String?
    /// The root disk, copied per machine (the VMM writes to it directly).
    package var rootDisk: String?
    /// Kernel parameters of the image (or the spec's `cmdline` for a kernel).
    package var cmdline: String
    package var hostnameParameter = "vouch.hostname"
    /// The unit that means "booted", for images with systemd.
    package var readyUnit: String?

    /// The name of the machine's copy of the root disk in its state directory.
    package static let diskFile = "root.img"

    /// The vsock port the guest's backdoor listens on (`vouch.vsock=`).
    package static let backdoorPort: UInt32 = 1234

    /// Resolves the spec's files. `image` wins unless `kernel` is given.
    /// - Throws: `.missingImage` naming the file or image that is missing,
    ///   or an image built before it had the vsock backdoor.
    package static func resolve(image: String?, kernel: String?, initrd: String?, disk: String?, cmdline: String?,
                                machine: String) throws(VouchError) -> MicroVMGuest {
        if let kernel {
            for (what, path) in [("kernel", kernel), ("initrd", initrd), ("disk", disk)] {
                if let path, !FileManager.default.fileExists(atPath: path) {
                    throw VouchError(.missingImage, "\(what) \(path) does not exist", machine: machine)
                }
            }
            return MicroVMGuest(kernel: kernel, initrd: initrd, rootDisk: disk, cmdline: cmdline ?? "console=ttyS0")
        }
        let reference = image ?? "minimal"
        let resolved: GuestImage
        do { resolved = try GuestImage.resolve(reference) } catch { throw error.on(machine) }
        guard resolved.vsockBackdoor else {
            throw VouchError(.missingImage, "image '\(reference)' has no vsock backdoor (built before it had one); rebuild it with `vouch images build \(reference)`",
                             machine: machine)
        }
        var guest = MicroVMGuest(kernel: resolved.kernel.path, initrd: resolved.initrd?.path, rootDisk: resolved.rootDisk?.path,
                                 cmdline: resolved.cmdline + (cmdline.map { " " + $0 } ?? ""))
        guest.hostnameParameter = resolved.hostnameParameter
        guest.readyUnit = resolved.readyUnit
        return guest
    }

    /// The whole kernel command line for machine `name`: the image's, the
    /// host name, the backdoor port, the addressing. The addressing of
    /// QEMU's port-forwarding card is left out: a microVM has none, and the
    /// guest would wait for it.
    package func commandLine(name: String, network: MachineNetwork?) -> String {
        var words = cmdline.split(separator: " ").map(String.init)
        words.append("\(hostnameParameter)=\(HostName.forNode(name))")
        words.append("vouch.vsock=\(Self.backdoorPort)")
        // No virtio console: the hvc0 backdoor (which waits for dev-hvc0.device,
        // and multi-user.target with it) is masked; busybox guests ignore this.
        words.append("systemd.mask=backdoor.service")
        // Reboot through the keyboard controller: both VMMs end on a guest reboot.
        words.append("reboot=k")
        if let network {
            for word in network.kernelParameters.split(separator: " ") {
                guard word.hasPrefix("vouch.ip=") else { words.append(String(word)); continue }
                let cards = word.dropFirst("vouch.ip=".count).split(separator: ",")
                    .filter { !$0.lowercased().hasPrefix(network.forwardingMAC.lowercased()) }
                if !cards.isEmpty { words.append("vouch.ip=" + cards.joined(separator: ",")) }
            }
        }
        return words.joined(separator: " ")
    }

    /// Copies the root disk into `directory` (as `root.img`) and returns the
    /// copy; a machine started again keeps its copy.
    /// - Throws: `.other` with cp's output.
    package func copyRootDisk(into directory: String, machine: String) async throws(VouchError) -> String? {
        guard let rootDisk else { return nil }
        let copy = directory + "/" + Self.diskFile
        if FileManager.default.fileExists(atPath: copy) { return copy }
        try await Self.copy(rootDisk, to: copy, machine: machine)
        return copy
    }

    /// Copies a disk file, sparse, reflinked where the file system can.
    /// - Throws: `.other` with cp's output.
    static func copy(_ source: String, to destination: String, machine: String) async throws(VouchError) {
        let (status, output) = try await ChildProcess.run("cp", ["--reflink=auto", "--sparse=always", source, destination], timeout: 300)
        guard status == .exited(0) else {
            throw VouchError(.other, "cannot copy \(source) to \(destination) (\(status))", machine: machine, outputTail: tail(output))
        }
    }

    /// What a microVM snapshot depends on outside itself (`Snapshotting.snapshotKey`).
    static func snapshotKey(vmm: MicroVMProcess, guest: MicroVMGuest, memoryMiB: Int, cpus: Int) -> String {
        var lines = ["format 1", "vmm \(vmm.binary.version)", "memory \(memoryMiB)", "cpus \(cpus)"]
        for file in [guest.kernel, guest.initrd, guest.rootDisk].compactMap({ $0 }) { lines.append("file " + SnapshotFacts.identity(of: file)) }
        lines.append("cmdline " + guest.commandLine(name: vmm.context.name, network: vmm.context.network))
        lines += (vmm.context.network?.attachments ?? []).map { "nic \($0.nic.vlan) \($0.nic.mac) \($0.tap ?? "-")" }
        return lines.joined(separator: "\n")
    }
}
