import Foundation
import VouchSupport

/// How to boot one QEMU machine.
public struct QEMUConfig: Sendable {
    /// Where the kernel comes from.
    public enum Boot: Sendable {
        /// Direct kernel boot: Vouch builds the whole command line.
        case direct(kernel: String, initrd: String?, rootDisk: String?, cmdline: String)
        /// A nixpkgs `run-NAME-vm` script; Vouch adds only the test devices.
        case startScript(String)
    }

    /// The emulated board.
    public enum Board: String, Sendable, CaseIterable {
        /// `-M microvm`: virtio-mmio devices, PVH kernel boot, no PCI. Fastest.
        case microvm
        /// `-M pc`: the PC most guests (and NixOS start scripts) expect.
        case pc
    }

    /// What to boot.
    public var boot: Boot
    /// The QEMU machine type.
    public var board: Board = .microvm
    /// Guest memory in MiB.
    public var memoryMiB = 512
    /// Virtual CPUs.
    public var cpus = 1
    /// A VGA display (1024x768, as NixOS test VMs) and a USB tablet; `pc` board only.
    public var graphics = false
    /// Extra arguments appended to QEMU's command line.
    public var extraArgs: [String] = []
    /// Extra kernel parameters (direct boot only).
    public var extraCmdline: String = ""
    /// KVM, TCG, or probe (`auto`).
    public var accelerator: Accelerator.Choice = .auto
    /// The QEMU executable.
    public var qemuBinary = "qemu-system-x86_64"

    /// A configuration with the defaults for `boot`.
    public init(boot: Boot) {
        self.boot = boot
    }
}

/// Builds QEMU's argument list. Pure, so it is unit-tested directly.
package struct QEMUCommandLine {
    package let config: QEMUConfig
    package let stateDirectory: String
    package let sharedDirectory: String
    package let accelerator: Accelerator.Kind
    /// The copy-on-write overlay over the root disk, if there is one.
    package let overlay: String?

    package init(config: QEMUConfig, stateDirectory: String, sharedDirectory: String, accelerator: Accelerator.Kind,
                 overlay: String?, network: MachineNetwork? = nil) {
        self.config = config
        self.stateDirectory = stateDirectory
        self.sharedDirectory = sharedDirectory
        self.accelerator = accelerator
        self.overlay = overlay
        self.network = network
    }
    /// Network cards to add, or nil.
    package var network: MachineNetwork? = nil
    /// Where guest RAM lives (direct boot only; see `QEMUSnapshot.swift`).
    package var memory: GuestMemory? = nil
    /// Start paused, waiting for `migrate-incoming` (a snapshot restore).
    package var incoming = false

    package var qmpSocket: String { stateDirectory + "/qmp" }

    /// The human monitor's socket (nixpkgs' `send_monitor_command` talks to one).
    package var monitorSocket: String { Self.monitorSocket(in: stateDirectory) }

    package static func monitorSocket(in stateDirectory: String) -> String { stateDirectory + "/monitor" }

    /// The fd QEMU inherits as its end of the guest shell socket.
    package static let shellFD = 3

    /// The devices Vouch needs in any guest: the backdoor console, QMP,
    /// serial to stdout, an RNG, and the shared directory.
    package var testDevices: [String] {
        let mmio = config.board == .microvm
        var args = [
            "-qmp", "unix:\(qmpSocket),server=on,wait=off",
            "-monitor", "unix:\(monitorSocket),server=on,wait=off",
            "-chardev", "socket,id=shell,fd=\(Self.shellFD)",
            "-device", mmio ? "virtio-serial-device" : "virtio-serial",
            "-device", "virtconsole,chardev=shell",
            "-device", mmio ? "virtio-rng-device" : "virtio-rng-pci",
            "-serial", "stdio",
            "-no-reboot",
        ]
        args += displayArguments
        if case .direct = config.boot {
            if let network {
                args += [
                    "-netdev", "user,id=forward,restrict=on",
                    "-device", (mmio ? "virtio-net-device" : "virtio-net-pci") + ",netdev=forward,mac=\(network.forwardingMAC)",
                ]
            }
            for a in network?.attachments ?? [] {
                let backend = a.tap.map { "tap,id=\(a.nic.netdev),ifname=\($0),script=no,downscript=no" }
                    ?? "vde,id=\(a.nic.netdev),sock=\(a.switchDirectory)"
                args += [
                    "-device", (mmio ? "virtio-net-device" : "virtio-net-pci") + ",netdev=\(a.nic.netdev),mac=\(a.nic.mac)",
                    "-netdev", backend,
                ]
            }
            args += [
                "-fsdev", "local,id=shared,path=\(sharedDirectory),security_model=none",
                "-device", (mmio ? "virtio-9p-device" : "virtio-9p-pci") + ",fsdev=shared,mount_tag=shared",
            ]
        }
        return args
    }

    /// The environment QEMU runs in: nixpkgs opens no window unless the
    /// driver itself has a display.
    package var environment = ProcessInfo.processInfo.environment

    /// Vouch's own VMs never open a window: a display is a VGA card QEMU
    /// renders for `screendump`. A start script brings its own display
    /// devices; as in nixpkgs' driver, it gets `-nographic` when the driver
    /// has no display (`DISPLAY`, `WAYLAND_DISPLAY`), else shows its window.
    package var displayArguments: [String] {
        switch config.boot {
        case .startScript:
            let hasDisplay = ["DISPLAY", "WAYLAND_DISPLAY"].contains { !(environment[$0] ?? "").isEmpty }
            return hasDisplay ? [] : ["-nographic"]
        case .direct:
            guard config.graphics else { return ["-display", "none"] }
            return [
                "-display", "none",
                "-device", "VGA,xres=\(Self.screenWidth),yres=\(Self.screenHeight)",
                "-device", "qemu-xhci,id=usb", "-device", "usb-tablet,bus=usb.0",
            ]
        }
    }

    /// The display size NixOS test VMs have (`virtualisation.resolution`).
    package static let screenWidth = 1024, screenHeight = 768

    /// The full argument list (without the program) for direct boot, or the
    /// arguments to append to a start script.
    package func arguments(hostnameParameter: String, hostname: String) -> [String] {
        switch config.boot {
        case .startScript:
            return testDevices + config.extraArgs
        case .direct(let kernel, let initrd, _, let cmdline):
            let mmio = config.board == .microvm
            var args = [
                "-name", hostname,
                "-M", (mmio ? "microvm,x-option-roms=off,rtc=on" : "pc") + (memory == nil ? "" : ",memory-backend=ram"),
                "-accel", accelerator.rawValue,
                "-cpu", accelerator == .kvm ? "host" : "max",
                "-m", "\(config.memoryMiB)",
                "-smp", "\(config.cpus)",
                "-nodefaults", "-no-user-config",
                "-kernel", kernel,
            ]
            if let initrd { args += ["-initrd", initrd] }
            if let memory { args += ["-object", memory.objectArgument(sizeMiB: config.memoryMiB)] }
            if incoming { args += ["-incoming", "defer", "-S"] }
            var append = cmdline
            append += " \(hostnameParameter)=\(hostname) panic=-1"
            if let params = network?.kernelParameters, !params.isEmpty { append += " " + params }
            if accelerator == .tcg, let khz = HostTiming.tscKHz { append += " tsc_early_khz=\(khz)" }
            if !config.extraCmdline.isEmpty { append += " " + config.extraCmdline }
            args += ["-append", append]
            if let overlay {
                args += [
                    "-drive", "if=none,id=root,file=\(overlay),format=qcow2",
                    "-device", (mmio ? "virtio-blk-device" : "virtio-blk-pci") + ",drive=root",
                ]
            }
            return args + testDevices + config.extraArgs
        }
    }

    /// The environment a nixpkgs start script expects (PROTOCOLS.md §3).
    package func startScriptEnvironment(base: [String: String]) -> [String: String] {
        var env = base
        env["TMPDIR"] = stateDirectory
        env["USE_TMPDIR"] = "1"
        env["SHARED_DIR"] = sharedDirectory
        // nixpkgs start scripts add their own NICs from these.
        for a in network?.attachments ?? [] {
            env["QEMU_VDE_SOCKET_\(a.nic.vlan)"] = a.switchDirectory
        }
        if accelerator == .tcg, let khz = HostTiming.tscKHz {
            env["QEMU_KERNEL_PARAMS"] = [base["QEMU_KERNEL_PARAMS"], "tsc_early_khz=\(khz)"]
                .compactMap { $0 }.joined(separator: " ")
        }
        return env
    }
}

/// Timing facts about the host that a TCG guest needs.
package enum HostTiming {
    /// The host's TSC frequency in kHz (from /proc/cpuinfo).
    ///
    /// Under TCG the guest's TSC runs at the host's rate, but a guest kernel
    /// calibrating it against the PIT on a loaded host can fail, mark the TSC
    /// unstable and then hang calibrating its delay loop. Passing
    /// `tsc_early_khz` skips that calibration, so boot does not depend on
    /// host load.
    package static let tscKHz: Int? = {
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return nil }
        for line in info.split(separator: "\n") where line.hasPrefix("cpu MHz") {
            guard let value = line.split(separator: ":").last,
                  let mhz = Double(value.trimmingCharacters(in: .whitespaces)), mhz > 0 else { return nil }
            return Int(mhz * 1000)
        }
        return nil
    }()
}
