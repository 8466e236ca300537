import VouchSupport

/// Every backend Vouch has. The spec parser, the driver, the nixpkgs
/// configuration reader and the benchmarks find backends only here:
/// adding a backend is one folder and one line in `providers`.
package enum BackendRegistry {
    /// The providers, in the order messages list them.
    package static let providers: [any BackendProvider] = [
        QEMUProvider(),
        NspawnProvider(),
        SSHProvider(),
        FirecrackerProvider(),
        CloudHypervisorProvider(),
    ]

    /// The registered names.
    package static var names: [String] { providers.map(\.name) }

    /// The provider called `name`.
    /// - Throws: `.invalidSpec` listing the known backends.
    package static func provider(named name: String) throws(VouchError) -> any BackendProvider {
        guard let provider = providers.first(where: { $0.name == name }) else {
            throw VouchError(.invalidSpec, "unknown backend '\(name)' (known: \(names.joined(separator: ", ")))")
        }
        return provider
    }

    /// The provider that runs a nixpkgs configuration's `section` (`vms`, `containers`).
    package static func provider(forNixpkgsSection section: String) -> (any BackendProvider)? {
        providers.first { $0.nixpkgsSection == section }
    }

    /// The sections of a nixpkgs configuration some backend runs.
    package static var nixpkgsSections: [String] { providers.compactMap(\.nixpkgsSection) }
}
