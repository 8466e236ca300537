import VouchSupport

/// Where each node sits on the test network, following nixpkgs: nodes are
/// numbered 1... in alphabetical order; on VLAN `v` node `n` has MAC
/// `52:54:00:12:vv:nn`, `192.168.v.n/24` and `2001:db8:v::n/64`.
public struct NetworkPlan: Sendable, Equatable {
    /// One network card of one machine.
    public struct NIC: Sendable, Equatable {
        /// The VLAN this card is on.
        public var vlan: Int
        /// Its MAC address, `52:54:00:12:VV:NN` as in nixpkgs.
        public var mac: String
        /// Its IPv4 address, `192.168.V.N`.
        public var ipv4: String
        /// Its IPv6 address, `2001:db8:V::N`.
        public var ipv6: String
        /// The QEMU netdev id (`vlanN`), also the link name for `set_link`.
        public var netdev: String { "vlan\(vlan)" }
    }

    /// A machine's place in the network.
    public struct Node: Sendable, Equatable {
        /// The node name.
        public var name: String
        /// The node number (1…, alphabetical).
        public var number: Int
        /// One card per VLAN the node is on.
        public var nics: [NIC]
    }

    /// Every node, in number order.
    public var nodes: [Node]

    /// Every VLAN used by some machine, ascending.
    public var vlans: [Int] { Array(Set(nodes.flatMap { $0.nics.map(\.vlan) })).sorted() }

    /// Plans addresses for `machines` (name and VLAN list).
    /// - Throws: `VouchError.invalidSpec` for more than 254 nodes or a VLAN outside 1...255.
    public init(machines: [(name: String, vlans: [Int])]) throws(VouchError) {
        let sorted = machines.sorted { $0.name < $1.name }
        guard sorted.count <= 254 else {
            throw VouchError(.invalidSpec, "at most 254 machines fit in one test network (got \(sorted.count))")
        }
        nodes = try sorted.enumerated().map { (index, machine) throws(VouchError) -> Node in
            let n = index + 1
            let nics = try machine.vlans.map { (v) throws(VouchError) -> NIC in
                guard (1...255).contains(v) else {
                    throw VouchError(.invalidSpec, "machines.\(machine.name).vlans: VLAN \(v) is outside 1...255")
                }
                return NIC(vlan: v, mac: Self.mac(vlan: v, node: n), ipv4: "192.168.\(v).\(n)",
                           ipv6: "2001:db8:\(v)::\(n)")
            }
            return Node(name: machine.name, number: n, nics: nics)
        }
    }

    package static func mac(vlan: Int, node: Int) -> String {
        "52:54:00:12:\(hex(vlan)):\(hex(node))"
    }

    /// The MAC of a node's port-forwarding card (QEMU user networking,
    /// isolated from the host's network; only `forwardPort` reaches it).
    package static func forwardingMAC(node: Int) -> String { "52:54:00:ff:00:\(hex(node))" }

    /// The guest address of the port-forwarding card (QEMU's user-mode default).
    package static let forwardingAddress = "10.0.2.15"

    /// The node called `name`.
    public func node(_ name: String) -> Node? { nodes.first { $0.name == name } }

    /// Kernel parameters for the guests Vouch builds: which address goes on
    /// which NIC (by MAC), and every node's first address for /etc/hosts.
    public func kernelParameters(for name: String, forwarding: Bool = false) -> String {
        guard let node = node(name) else { return "" }
        var params: [String] = []
        var addresses = node.nics.map { "\($0.mac)@\($0.ipv4)/24@\($0.ipv6)/64" }
        if forwarding {
            addresses.append("\(Self.forwardingMAC(node: node.number))@\(Self.forwardingAddress)/24@fec0::15/64")
        }
        if !addresses.isEmpty { params.append("vouch.ip=" + addresses.joined(separator: ",")) }
        // The node's name and, where it differs, the host name it runs with (`one_two`, `onetwo`).
        let hosts = nodes.flatMap { n -> [String] in
            guard let nic = n.nics.first else { return [] }
            let names = Set([n.name, HostName.forNode(n.name)]).sorted()
            return names.map { "\($0)@\(nic.ipv4)@\(nic.ipv6)" }
        }
        if !hosts.isEmpty { params.append("vouch.hosts=" + hosts.joined(separator: ",")) }
        return params.joined(separator: " ")
    }
}

private func hex(_ x: Int) -> String { (x < 16 ? "0" : "") + String(x, radix: 16) }
