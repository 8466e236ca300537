import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

@Suite struct NetworkPlanTests {
    @Test func nodesAreNumberedAlphabeticallyWithNixpkgsMACsAndAddresses() throws {
        let plan = try NetworkPlan(machines: [("server", [1]), ("client", [1, 2]), ("db", [2])])
        #expect(plan.nodes.map(\.name) == ["client", "db", "server"])
        #expect(plan.nodes.map(\.number) == [1, 2, 3])
        let client = try #require(plan.node("client"))
        #expect(client.nics.map(\.mac) == ["52:54:00:12:01:01", "52:54:00:12:02:01"])
        #expect(client.nics.map(\.ipv4) == ["192.168.1.1", "192.168.2.1"])
        #expect(client.nics.map(\.ipv6) == ["2001:db8:1::1", "2001:db8:2::1"])
        #expect(client.nics.map(\.netdev) == ["vlan1", "vlan2"])
        #expect(plan.node("db")?.nics.first?.mac == "52:54:00:12:02:02")
        #expect(plan.vlans == [1, 2])
    }

    @Test func hexDigitsInMACs() throws {
        let names = (1...20).map { String(format: "n%02d", $0) }
        let plan = try NetworkPlan(machines: names.map { ($0, [17]) })
        #expect(plan.node("n20")?.nics.first?.mac == "52:54:00:12:11:14")
    }

    @Test func kernelParametersCarryAddressesAndEveryNodesFirstAddress() throws {
        let plan = try NetworkPlan(machines: [("server", [1]), ("client", [1, 2]), ("offline", [])])
        #expect(plan.kernelParameters(for: "client") ==
            "vouch.ip=52:54:00:12:01:01@192.168.1.1/24@2001:db8:1::1/64,52:54:00:12:02:01@192.168.2.1/24@2001:db8:2::1/64"
            + " vouch.hosts=client@192.168.1.1@2001:db8:1::1,server@192.168.1.3@2001:db8:1::3")
        // A machine without NICs still learns the others' names.
        #expect(plan.kernelParameters(for: "offline") == "vouch.hosts=client@192.168.1.1@2001:db8:1::1,server@192.168.1.3@2001:db8:1::3")
        #expect(plan.kernelParameters(for: "nobody") == "")
    }

    @Test func invalidVLANsAreRejected() {
        #expect(throws: VouchError.self) { try NetworkPlan(machines: [("a", [0])]) }
        #expect(throws: VouchError.self) { try NetworkPlan(machines: [("a", [256])]) }
        let tooMany = (0..<255).map { ("m\($0)", [1]) }
        #expect(throws: VouchError.self) { try NetworkPlan(machines: tooMany) }
    }

    @Test func specVLANsDefaultToOneAndAreValidated() throws {
        let spec = try TestSpec.parse(["machines": ["a": [:], "b": ["vlans": [1, 2]], "c": ["vlans": []]]])
        #expect(spec.machines.map(\.vlans) == [[1], [1, 2], []])
        let bad = #expect(throws: VouchError.self) { try TestSpec.parse(["machines": ["a": ["vlans": [300]]]]) }
        #expect(bad?.message.contains("machines.a.vlans") == true)
        let wrongType = #expect(throws: VouchError.self) { try TestSpec.parse(["machines": ["a": ["vlans": "1"]]]) }
        #expect(wrongType?.message.contains("must be an array") == true)
    }
}

@Suite struct NetworkKindSpecTests {
    @Test func networkKindDefaultsToVDEAndIsValidated() throws {
        #expect(try TestSpec.parse(["machines": ["a": [:]]]).network == .vde)
        #expect(try TestSpec.parse(["network": "tap", "machines": ["a": [:]]]).network == .tap)
        let bad = #expect(throws: VouchError.self) { try TestSpec.parse(["network": "slirp", "machines": ["a": [:]]]) }
        #expect(bad?.message.contains("spec.network: unknown value 'slirp' (one of: vde, tap)") == true)
    }

    @Test func tapNamesFitLinuxInterfaceNames() {
        #expect(NetworkNamespace.tapName(node: 254, vlan: 255) == "tap254v255")
        #expect(NetworkNamespace.tapName(node: 254, vlan: 255).count <= 15)
    }
}
