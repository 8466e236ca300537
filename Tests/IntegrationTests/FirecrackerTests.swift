import Foundation
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchSupport

/// The firecracker backend against Vouch's emulator: networks, API and
/// vsock faults, and refusal where it cannot run. Every fault must end in a
/// clear `VouchError` within its deadline with nothing left running.
@Suite(.serialized)
struct FirecrackerTests {
    /// Two microVMs and a QEMU VM on one TAP VLAN reach each other by name;
    /// block() on a microVM takes its TAP down.
    @Test func twoMicroVMsAndAQEMUVMOnOneVLAN() async throws {
        let before = MicroVMBinaries.emulatedGuests()
        let machines = [microVM("fc1", vlans: [1]), microVM("fc2", vlans: [1]), guest("vm")]
        let run = try await RealRun.run(machines, network: .tap) { d in
            try await d.startAll()
            let fc1 = try d.machine("fc1"), fc2 = try d.machine("fc2"), vm = try d.machine("vm")
            try await fc1.succeed("ping -c 1 -W 5 fc2")
            try await fc2.succeed("ping -c 1 -W 5 vm")
            try await vm.succeed("ping -c 1 -W 5 fc1")
            try await fc1.block()
            try await vm.fail("ping -c 1 -W 2 fc1")
            try await fc1.unblock()
            try await vm.waitUntilSucceeds("ping -c 1 -W 2 fc1", timeout: 60)
            // forwardPort relays into the namespace, to fc1's address.
            try await fc1.succeed("(while true; do echo hello-from-fc1 | nc -l -p 7777; done) >/dev/null 2>&1 &")
            let port = try await fc1.forwardPort(guest: 7777)
            let (status, output) = try await ChildProcess.run("bash", ["-c", "for i in 1 2 3 4 5; do exec 3<>/dev/tcp/127.0.0.1/\(port) && timeout 5 head -n 1 <&3 && exit 0; sleep 1; done; exit 1"])
            #expect(status == .exited(0) && output.contains("hello-from-fc1"), "\(status): \(output)")
        }
        #expect(run.outcome == .passed)
        #expect(MicroVMBinaries.emulatedGuests().subtracting(before).isEmpty)
    }

    /// The VMM refuses, drops or ignores a configuration request.
    @Test(arguments: [
        ("PUT /drives/rootfs=400", "refused PUT /drives/rootfs (HTTP 400)"),
        ("PUT /machine-config=close", "closed the connection before it answered PUT /machine-config"),
        ("PUT /boot-source=close-mid", "PUT /boot-source"),
        ("PUT /vsock=hang", "did not answer PUT /vsock within 10 s"),
    ])
    func apiFault(fault: String, expected: String) async throws {
        let before = MicroVMBinaries.emulatedGuests()
        let began = ContinuousClock.now
        let run = try await withEmulatorFaults(fault) {
            try await RealRun.run([microVM("fc", image: "systemd")]) { d in
                let e = await #expect(throws: VouchError.self) { try await d.machine("fc").start() }
                #expect(e?.kind == .bootFailed && e?.machine == "fc", "\(String(describing: e))")
                #expect(e?.message.contains("firecracker could not start the microVM") == true, "\(String(describing: e))")
                #expect(e?.message.contains(expected) == true, "\(String(describing: e?.message))")
                throw e ?? VouchError(.other, "no error")
            }
        }
        #expect(run.outcome != .passed)
        #expect((ContinuousClock.now - began).seconds < 60)
        #expect(MicroVMBinaries.emulatedGuests().subtracting(before).isEmpty)
    }

    /// The guest's vsock side: nothing listens, CONNECT is refused, or the
    /// listener accepts and never prints the banner.
    @Test(arguments: [
        ("vsock=refuse", [String: String](), "nothing in the guest accepted vsock port 1234"),
        ("", ["FAKE_VMM_VSOCK_PORTS": "4321"], "nothing in the guest accepted vsock port 1234"),
        ("vsock=silent", [String: String](), "the backdoor shell did not come up within 20 s"),
    ])
    func vsockFault(fault: String, environment: [String: String], expected: String) async throws {
        let before = MicroVMBinaries.emulatedGuests()
        for (key, value) in environment { setenv(key, value, 1) }
        defer { for key in environment.keys { unsetenv(key) } }
        let run = try await withEmulatorFaults(fault) {
            try await RealRun.run([microVM("fc", bootTimeout: 20)]) { d in
                let e = await #expect(throws: VouchError.self) { try await d.machine("fc").start() }
                #expect(e?.kind == .bootFailed && e?.machine == "fc", "\(String(describing: e))")
                #expect(e?.message.contains(expected) == true, "\(String(describing: e?.message))")
                throw e ?? VouchError(.other, "no error")
            }
        }
        #expect(run.outcome != .passed)
        #expect(MicroVMBinaries.emulatedGuests().subtracting(before).isEmpty)
    }

    /// No binary, or a real one on a host without usable KVM: refused by the
    /// check before anything starts, naming what is missing.
    @Test func refusedWhereItCannotRun() throws {
        let missing = TestSpec(name: "t", machines: [microVM("fc", binary: "/nonexistent/firecracker")])
        let e = #expect(throws: VouchError.self) { try missing.check() }
        #expect(e?.kind == .unsupported && e?.message.contains("/nonexistent/firecracker does not exist") == true, "\(String(describing: e))")

        let dir = NSTemporaryDirectory() + "vouch-fc-stub-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let stub = dir + "/firecracker"
        try "#!/bin/sh\necho 'Firecracker v1.10.1'\n".write(toFile: stub, atomically: true, encoding: .utf8)
        chmod(stub, 0o755)
        let real = TestSpec(name: "t", machines: [microVM("fc", binary: stub)])
        let kernel = try GuestImage.resolve("minimal").kernel.path
        if let why = KVMCheck.unusable(probeKernel: kernel) {
            let k = #expect(throws: VouchError.self) { try real.check() }
            #expect(k?.kind == .unsupported && k?.message.contains("needs KVM") == true && k?.message.contains(why) == true,
                    "\(String(describing: k))")
        } else {
            try real.check()
        }

        try "#!/bin/sh\necho 'cloud-hypervisor v40'\n".write(toFile: stub, atomically: true, encoding: .utf8)
        chmod(stub, 0o755)
        let wrong = #expect(throws: VouchError.self) { try real.check() }
        #expect(wrong?.message.contains("not Firecracker") == true, "\(String(describing: wrong))")
    }
}
