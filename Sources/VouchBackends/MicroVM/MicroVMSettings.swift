import VouchSupport

/// The spec keys both microVM backends share: what to boot, its size, and
/// the VMM's executable.
public protocol MicroVMSettings: BackendSettings {
    /// A built-in image name or an image directory (default `minimal`).
    var image: String? { get set }
    /// A kernel (uncompressed vmlinux) to boot instead of an image.
    var kernel: String? { get set }
    /// The initrd for `kernel`.
    var initrd: String? { get set }
    /// A raw root disk for `kernel` (copied per machine).
    var disk: String? { get set }
    /// Kernel parameters (added to an image's own).
    var cmdline: String? { get set }
    /// Guest memory in MiB.
    var memoryMiB: Int { get set }
    /// Virtual CPUs.
    var cpus: Int { get set }
    /// The VMM executable (default: its environment variable, else PATH).
    var binary: String? { get set }

    /// Defaults: 512 MiB, one CPU, no image chosen yet.
    init()
}

extension MicroVMSettings {
    /// Reads the shared keys (`MicroVMGuest.specKeys`).
    /// - Throws: `.invalidSpec` naming the key and what is wrong.
    static func parse(_ o: SpecObject, maxCPUs: Int) throws(VouchError) -> Self {
        var s = Self()
        s.image = try o.string("image")
        s.kernel = try o.string("kernel")
        s.initrd = try o.string("initrd")
        s.disk = try o.string("disk")
        s.cmdline = try o.string("cmdline")
        s.memoryMiB = try o.int("memory") ?? 512
        s.cpus = try o.int("cpus") ?? 1
        s.binary = try o.string("binary")
        guard s.image == nil || s.kernel == nil else { throw SpecObject.invalid("\(o.path): give image or kernel, not both") }
        if s.kernel == nil, s.initrd != nil || s.disk != nil { throw SpecObject.invalid("\(o.path): initrd and disk go with kernel") }
        if s.kernel == nil, s.image == nil { s.image = "minimal" }
        guard s.memoryMiB >= 32 else { throw SpecObject.invalid("\(o.path).memory: at least 32 (MiB)") }
        guard (1...maxCPUs).contains(s.cpus) else { throw SpecObject.invalid("\(o.path).cpus: 1 to \(maxCPUs)") }
        return s
    }

    /// The files to boot, resolved.
    /// - Throws: `.missingImage` as `MicroVMGuest.resolve`.
    func guest(machine: String) throws(VouchError) -> MicroVMGuest {
        try MicroVMGuest.resolve(image: image, kernel: kernel, initrd: initrd, disk: disk, cmdline: cmdline, machine: machine)
    }
}

extension MicroVMGuest {
    /// The keys of `MicroVMSettings` in a spec.
    package static let specKeys: Set<String> = ["image", "kernel", "initrd", "disk", "cmdline", "memory", "cpus", "binary"]

    /// MicroVMs' network cards are TAP devices; there is no VDE plug.
    /// - Throws: `.invalidSpec` when a machine on VLANs is in a VDE network.
    static func requireTAP(_ machine: MachineSpec, network: NetworkKind, backend: String) throws(VouchError) {
        if network == .vde, !machine.vlans.isEmpty {
            throw VouchError(.invalidSpec, "machines.\(machine.name): the \(backend) backend needs \"network\": \"tap\" to join VLANs (or \"vlans\": [])")
        }
    }
}
