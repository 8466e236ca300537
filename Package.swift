// swift-tools-version: 6.2
import PackageDescription

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
        .target(
            name: "Vouch",
            dependencies: ["CVouch"]
        ),
        .executableTarget(
            name: "vouch",
            dependencies: [
                "Vouch",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "VouchTests", dependencies: ["Vouch"]),
        .testTarget(name: "IntegrationTests", dependencies: ["Vouch"]),
    ]
)
