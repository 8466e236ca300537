// swift-tools-version: 6.2
import PackageDescription

// The library is layered; each target may use only the ones listed as its
// dependencies, so the compiler keeps the layers apart:
//
//   Vouch           test API: Machine, Driver, specs, scripts, the Python bridge
//   VouchBackends   backends (one folder each), their registry and capabilities,
//                   test networks, images, the boot snapshot cache
//   VouchGuest      the guest channel: backdoor shell framing, serial console
//   VouchWire       wire protocols: QMP, VDE management
//   VouchSupport    errors, processes, descriptors, deadlines, logging
//
// VouchTesting holds the test doubles (a fake guest on a pty); it is not
// part of the shipped library.
let package = Package(
    name: "Vouch",
    products: [
        // Dynamic so that compiled test scripts and the CLI share one copy of the library.
        .library(name: "Vouch", type: .dynamic, targets: ["Vouch"]),
        .executable(name: "vouch", targets: ["vouch"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .target(name: "CVouch"),
        .target(name: "VouchSupport", dependencies: ["CVouch"]),
        .target(name: "VouchWire", dependencies: ["VouchSupport"]),
        .target(name: "VouchGuest", dependencies: ["VouchSupport"]),
        .target(name: "VouchBackends", dependencies: ["VouchSupport", "VouchWire", "VouchGuest", "CVouch"]),
        .target(name: "Vouch", dependencies: ["VouchBackends", "VouchGuest", "VouchWire", "VouchSupport", "CVouch"]),
        .target(name: "VouchTesting", dependencies: ["Vouch"]),
        .executableTarget(
            name: "vouch",
            dependencies: [
                "Vouch",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "VouchTests", dependencies: ["Vouch", "VouchTesting"]),
        .testTarget(name: "IntegrationTests", dependencies: ["Vouch", "VouchTesting"]),
    ]
)
