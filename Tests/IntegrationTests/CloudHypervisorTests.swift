import Foundation
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchSupport

/// The cloud-hypervisor backend against Vouch's emulator: API faults and
/// refusal where it cannot run (the scenario is in BackendScenarioTests).
@Suite(.serialized)
struct CloudHypervisorTests {
    @Test(arguments: [
        ("PUT /api/v1/vm.create=400", "refused PUT /api/v1/vm.create"),
        ("PUT /api/v1/vm.boot=close", "closed the connection before it answered PUT /api/v1/vm.boot"),
    ])
    func apiFault(fault: String, expected: String) async throws {
        let before = MicroVMBinaries.emulatedGuests()
        setenv("FAKE_CLOUD_HYPERVISOR_FAULTS", fault, 1)
        defer { unsetenv("FAKE_CLOUD_HYPERVISOR_FAULTS") }
        let run = try await RealRun.run([cloudHypervisorVM("ch")]) { d in
            let e = await #expect(throws: VouchError.self) { try await d.machine("ch").start() }
            #expect(e?.kind == .bootFailed && e?.machine == "ch", "\(String(describing: e))")
            #expect(e?.message.contains("cloud-hypervisor could not start the VM") == true, "\(String(describing: e))")
            #expect(e?.message.contains(expected) == true, "\(String(describing: e?.message))")
            throw e ?? VouchError(.other, "no error")
        }
        #expect(run.outcome != .passed)
        #expect(MicroVMBinaries.emulatedGuests().subtracting(before).isEmpty)
    }

    @Test func refusedWithoutABinary() throws {
        let spec = TestSpec(name: "t", machines: [cloudHypervisorVM("ch", binary: "/nonexistent/cloud-hypervisor")])
        let e = #expect(throws: VouchError.self) { try spec.check() }
        #expect(e?.kind == .unsupported && e?.message.contains("the cloud-hypervisor backend cannot run here") == true, "\(String(describing: e))")
        var onPath = TestSpec(name: "t", machines: [cloudHypervisorVM("ch")])
        onPath.machines[0].settings = CloudHypervisorSettings(image: "minimal")
        if ChildProcess.resolve("cloud-hypervisor") == nil, ProcessInfo.processInfo.environment["VOUCH_CLOUD_HYPERVISOR"] == nil {
            let p = #expect(throws: VouchError.self) { try onPath.check() }
            #expect(p?.message.contains("cloud-hypervisor is not on PATH") == true, "\(String(describing: p))")
        }
    }
}
