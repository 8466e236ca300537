import Foundation
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// What the shared scenario may expect of a backend.
struct ScenarioTraits {
    /// The target runs systemd (not true of this CI host itself).
    var systemd = true
    /// `shutdown()` is allowed; otherwise it must be refused.
    var powerControl = true
    /// Also reboot and check the shell comes back.
    var reboot = false
    /// Also snapshot and restore.
    var snapshots = false
}

/// One Machine-API scenario, run unchanged against every backend: boot,
/// succeed/fail with statuses, binary-safe output, a deadline with recovery,
/// waitForUnit, file copies both ways, and shutdown where allowed.
func machineScenario(_ m: Machine, _ traits: ScenarioTraits) async throws {
    try await m.start()
    #expect(await m.booted)

    let r = try await m.execute("echo out; echo err >&2; exit 7")
    #expect(r.status == 7 && r.text == "out\n")
    #expect(try await m.succeed("echo a", "printf b") == "a\nb")
    try await m.fail("test -e /nonexistent-\(UUID().uuidString)")
    let failed = await #expect(throws: VouchError.self) { try await m.succeed("echo doomed; exit 3") }
    #expect(failed?.kind == .commandFailed && failed?.status == 3 && failed?.machine == m.name)

    let binary = try await m.execute("printf 'a\\000b\\377\\036VOUCH:fake:0\\n'; printf tail")
    #expect(binary.output == [0x61, 0, 0x62, 0xFF, 0x1E] + Array("VOUCH:fake:0\ntail".utf8))
    let big = try await m.execute("head -c 5000000 /dev/zero | tr '\\0' x")
    #expect(big.output.count == 5_000_000)

    let timedOut = await #expect(throws: VouchError.self) { try await m.succeed("sleep 1000", timeout: 2) }
    #expect(timedOut?.kind == .timeout)
    #expect(try await m.succeed("echo still-here") == "still-here\n")

    if traits.systemd {
        try await m.waitForUnit("multi-user.target")
        let e = await #expect(throws: VouchError.self) { try await m.waitForUnit("no-such-unit.service", timeout: 5) }
        #expect(e != nil)
    }

    let dir = NSTemporaryDirectory() + "vouch-scenario-\(getpid())-\(m.name)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    var blob = [UInt8](repeating: 0, count: 1 << 20)
    for i in blob.indices { blob[i] = UInt8(truncatingIfNeeded: i &* 2_654_435_761 >> 13) }
    try Data(blob).write(to: URL(fileURLWithPath: dir + "/blob.bin"))
    let guestDir = "/tmp/vouch-scenario-\(UUID().uuidString.prefix(8))"
    try await m.copyFromHost(dir + "/blob.bin", to: guestDir + "/in/blob.bin")
    let guestSum = try await m.succeed("sha256sum \(guestDir)/in/blob.bin | cut -d' ' -f1")
    #expect(guestSum.trimmingCharacters(in: .whitespacesAndNewlines) == sha256(blob))
    try await m.succeed("head -c 300000 /dev/urandom > \(guestDir)/out.bin")
    let outSum = try await m.succeed("sha256sum \(guestDir)/out.bin | cut -d' ' -f1")
    let copied = try await m.copyFromMachine(guestDir + "/out.bin", to: "copied-\(m.name)")
    let data = try Data(contentsOf: copied)
    #expect(sha256(Array(data)) == outSum.trimmingCharacters(in: .whitespacesAndNewlines))
    try await m.succeed("rm -rf \(guestDir)")

    if traits.snapshots {
        try await m.succeed("echo before > /root/snapshot-marker; sleep 1000 >/dev/null 2>&1 &")
        try await m.snapshot("scenario")
        try await m.succeed("echo after > /root/snapshot-marker; pkill -x sleep")
        try await m.restore("scenario")
        #expect(try await m.succeed("cat /root/snapshot-marker") == "before\n")
        try await m.succeed("pgrep -x sleep")
        try await m.restore("scenario")
        #expect(try await m.succeed("cat /root/snapshot-marker") == "before\n")
    }

    if traits.reboot {
        try await m.succeed("touch /run/before-reboot")
        try await m.reboot()
        try await m.fail("test -e /run/before-reboot")
        #expect(try await m.succeed("echo back") == "back\n")
    }

    if traits.powerControl {
        try await m.shutdown()
        #expect(!(await m.isUp()))
    } else {
        let refused = await #expect(throws: VouchError.self) { try await m.shutdown() }
        #expect(refused?.kind == .unsupported)
        #expect(try await m.succeed("echo still-up") == "still-up\n")
    }
}

/// The scenario on each backend. QEMU and nspawn boot the same systemd image.
@Suite(.serialized)
struct BackendScenarioTests {
    @Test func scenarioOnQEMU() async throws {
        let run = try await RealRun.run([guest("vm", image: "systemd")]) { d in
            try await machineScenario(try d.machine("vm"), ScenarioTraits(snapshots: true))
        }
        #expect(run.outcome == .passed)
    }

    /// Firecracker, here against Vouch's emulator (the guest under QEMU TCG).
    @Test func scenarioOnFirecrackerEmulator() async throws {
        try await firecrackerScenario(binary: MicroVMBinaries.fakeFirecracker)
    }

    @Test(.enabled(if: MicroVMBinaries.realFirecracker != nil, "no firecracker binary with working KVM (set VOUCH_REAL_FIRECRACKER)"))
    func scenarioOnRealFirecracker() async throws {
        try await firecrackerScenario(binary: MicroVMBinaries.realFirecracker ?? "firecracker")
    }

    /// cloud-hypervisor, here against Vouch's emulator (the guest under QEMU TCG).
    @Test func scenarioOnCloudHypervisorEmulator() async throws {
        try await cloudHypervisorScenario(binary: MicroVMBinaries.fakeCloudHypervisor)
    }

    @Test(.enabled(if: MicroVMBinaries.realCloudHypervisor != nil, "no cloud-hypervisor binary with working KVM (set VOUCH_REAL_CLOUD_HYPERVISOR)"))
    func scenarioOnRealCloudHypervisor() async throws {
        try await cloudHypervisorScenario(binary: MicroVMBinaries.realCloudHypervisor ?? "cloud-hypervisor")
    }

    private func cloudHypervisorScenario(binary: String) async throws {
        let before = MicroVMBinaries.emulatedGuests()
        let run = try await RealRun.run([cloudHypervisorVM("ch", image: "systemd", binary: binary)]) { d in
            try await machineScenario(try d.machine("ch"), ScenarioTraits(snapshots: true))
        }
        #expect(run.outcome == .passed)
        #expect(MicroVMBinaries.emulatedGuests().subtracting(before).isEmpty, "the emulator left QEMU running")
    }

    private func firecrackerScenario(binary: String) async throws {
        let before = MicroVMBinaries.emulatedGuests()
        let run = try await RealRun.run([microVM("fc", image: "systemd", binary: binary)]) { d in
            let fc = try d.machine("fc")
            try await fc.start()
            let reboot = await #expect(throws: VouchError.self) { try await fc.reboot() }
            #expect(reboot?.kind == .unsupported && reboot?.message.contains("firecracker ends the microVM") == true)
            try await machineScenario(fc, ScenarioTraits(snapshots: true))
        }
        #expect(run.outcome == .passed)
        #expect(MicroVMBinaries.emulatedGuests().subtracting(before).isEmpty, "the emulator left QEMU running")
    }

    @Test func scenarioOnNspawn() async throws {
        let run = try await RealRun.run([container("ct", vlans: [])]) { d in
            let ct = try d.machine("ct")
            try await machineScenario(ct, ScenarioTraits(reboot: true))
            // After shutdown the next command boots it again; crash() pulls the plug.
            try await ct.succeed("touch /etc/before-crash")
            try await ct.crash()
            #expect(!(await ct.isUp()))
            try await ct.fail("test -e /etc/before-crash")
            let keys = await #expect(throws: VouchError.self) { try await ct.sendKey("ctrl-alt-delete") }
            #expect(keys?.kind == .unsupported && keys?.message.contains("not supported by the nspawn backend") == true)
            // No display device and no X server in the guest: the error names both.
            let screen = await #expect(throws: VouchError.self) { try await ct.screenshot("none") }
            #expect(screen?.kind == .unsupported && screen?.message.contains("a container has no display device") == true
                    && screen?.message.contains("/tmp/.X11-unix/X0 does not exist") == true, "\(String(describing: screen))")
            let tty = await #expect(throws: VouchError.self) { _ = try await ct.ttyText(1) }
            #expect(tty?.kind == .unsupported, "\(String(describing: tty))")
            let console = await #expect(throws: VouchError.self) { try await ct.sendConsole("x") }
            #expect(console?.kind == .unsupported && console?.message.contains("nspawn") == true)
        }
        #expect(run.outcome == .passed)
    }

    /// An existing host: a real sshd in a network namespace on this host
    /// (which does not run systemd and must not be powered off).
    @Test func scenarioOnSSHToAHostNamespace() async throws {
        let sshd = try await SSHDFixture.start()
        let spec = sshd.machine("host")
        let run = try await RealRun.run([spec]) { d in
            try await machineScenario(try d.machine("host"), ScenarioTraits(systemd: false, powerControl: false))
            let crash = await #expect(throws: VouchError.self) { try await d.machine("host").crash() }
            #expect(crash?.kind == .unsupported && crash?.message.contains("ssh backend") == true)
        }
        await sshd.stop()
        #expect(run.outcome == .passed)
    }

    /// sshd inside a Vouch-booted systemd VM, reached through forwardPort;
    /// power control allowed, so the scenario reboots the VM over ssh and
    /// its shutdown powers the VM off.
    @Test func scenarioOnSSHIntoAVouchGuest() async throws {
        let keyDir = NSTemporaryDirectory() + "vouch-sshkey-\(getpid())"
        try FileManager.default.createDirectory(atPath: keyDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: keyDir) }
        try await SSHDFixture.sh("ssh-keygen -q -t ed25519 -N '' -f \(keyDir)/id")
        let publicKey = try String(contentsOfFile: keyDir + "/id.pub", encoding: .utf8)
        let port = try LoopbackTCP.freePort()
        var s = SSHSettings(host: "127.0.0.1")
        s.port = port
        s.user = "root"
        s.identityFile = keyDir + "/id"
        s.knownHosts = .off
        s.allowPowerControl = true
        let remote = MachineSpec(name: "remote", ssh: s)
        let run = try await RealRun.run([guest("vm", image: "systemd"), remote]) { d in
            let vm = try d.machine("vm")
            try await vm.succeed("mkdir -p -m 700 /root/.ssh && echo \(shellQuote(publicKey)) > /root/.ssh/authorized_keys")
            try await vm.waitForUnit("ssh.service")
            try await vm.forwardPort(host: port, guest: 22)
            // Let the VM reset instead of exit, so the ssh machine's reboot()
            // comes back (the forwarded port survives: same QEMU process).
            try await vm.start(allowReboot: true)
            try await machineScenario(try d.machine("remote"), ScenarioTraits(reboot: true))
            // The ssh machine's shutdown powered the VM off.
            try await retry(timeout: 60) { guard !(await vm.isUp()) else { throw VouchError(.other, "vm still up") } }
        }
        #expect(run.outcome == .passed)
    }

    /// A VM and a container on one TAP VLAN reach each other by name, and
    /// block() on the container cuts it off.
    @Test func mixedVMAndContainerOnOneVLAN() async throws {
        let run = try await RealRun.run([guest("vm", image: "systemd"), container("ct", vlans: [1])], network: .tap) { d in
            let vm = try d.machine("vm"), ct = try d.machine("ct")
            try await d.startAll()
            try await vm.succeed("ping -c 1 -W 5 ct")
            try await ct.succeed("ping -c 1 -W 5 vm")
            try await ct.waitForUnit("nginx.service")
            try await vm.waitForUnit("nginx.service")
            try await vm.succeed("curl -sf --max-time 10 http://ct/ >/dev/null")
            try await ct.succeed("curl -sf --max-time 10 http://vm/ >/dev/null")
            try await ct.block()
            try await vm.fail("ping -c 1 -W 2 ct")
            try await ct.unblock()
            try await vm.waitUntilSucceeds("ping -c 1 -W 2 ct", timeout: 60)
            let port = try await ct.forwardPort(guest: 80)
            let (status, _) = try await ChildProcess.run("curl", ["-sf", "--max-time", "10", "http://127.0.0.1:\(port)/"])
            #expect(status == .exited(0))
        }
        #expect(run.outcome == .passed)
    }
}

/// An nspawn machine on the systemd image.
func container(_ name: String, vlans: [Int]) -> MachineSpec {
    var settings = NspawnSettings()
    settings.image = "systemd"
    var m = MachineSpec(name: name, nspawn: settings)
    m.vlans = vlans
    m.bootTimeout = 120
    return m
}
