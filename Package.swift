// swift-tools-version: 6.2
import PackageDescription

/// Swiftlet: a microVM launcher for fast-booting Linux guests on KVM.
///
/// Modules follow the seams of the machine:
/// - `CSwiftlet`: the C shim for what Swift cannot import (ioctl numbers, `_GNU_SOURCE` calls, signals).
/// - `CDecompress`: the C shim over Debian's zlib, liblz4 and libzstd.
/// - `SwiftletSys`: typed errno errors, owned file descriptors, EINTR handled in one place, `Epoll`, `EventFD`,
///   `TerminationSignals`, `FileLock`, `Subprocess`, clocks.
/// - `SwiftletPersist`: the snapshot state codec: each saved type (transport, UART, vCPU, VM) writes and reads its own
///   state through it, in a `+Persist.swift` file beside the type.
/// - `SwiftletMemory`: guest physical memory, bounds-checked.
/// - `SwiftletX86`: the x86_64 direct-boot structures (zero page, E820, GDT, page tables, MP table, loaders).
/// - `SwiftletKVM`: `/dev/kvm`, the VM and its vCPUs.
/// - `SwiftletDevices`: the legacy devices (8250 UART, i8042, boot timer) and the I/O buses.
/// - `SwiftletVirtio`: the virtio-mmio transport, split virtqueues, and the devices (block, net, vsock), one folder each.
/// - `SwiftletVMM`: assembles a machine and runs it.
/// - `SwiftletImage`: user images (OCI layouts, `docker save` archives, rootfs tarballs, directories, ext4) turned into
///   cached ext4 root drives: tar and JSON readers, digest checks, layers with whiteouts, the image's configuration.
/// - `SwiftletSandbox`: `swiftlet run`: the guest agent's protocol and one command in a throwaway VM.
/// - `CSeccomp`, `SwiftletSeccomp`: per-thread seccomp filters: allowlists as data, compiled by Debian's libseccomp
///   when Swiftlet is built (Filters.generated.swift), so a VMM runs no filter compiler.
/// - `CJail`, `SwiftletJail`: the jailer (`--jail`): cgroup leaf, namespaces, pivot_root, unprivileged uid, supervisor.
/// - `CRunner`, `SwiftletRunner`: the job runner's core (functions, jobs, the stores: SQLite, and PostgreSQL for a fleet; the
///   scheduler, the VMM processes it starts), without any HTTP.
/// - `swiftletd`: the job runner daemon (Hummingbird, GRDB, swift-prometheus): a separate
///   executable, so the `swiftlet` VMM binary links none of the server libraries.
/// - `swiftlet`: the command-line tool, and the VMM: a static executable in release (Makefile, RELEASE_FLAGS).
let package = Package(
    name: "Swiftlet",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "swiftlet", targets: ["swiftlet"]),
        .executable(name: "swiftletd", targets: ["swiftletd"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        // The job runner daemon only (swiftletd); the VMM binary links none of these.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        // The runner's command-line client (in swiftletd).
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        // The fleet's store (`serve --store postgres://`).
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
    ],
    targets: [
        .target(name: "CSwiftlet"),
        .target(
            name: "CDecompress",
            linkerSettings: [.linkedLibrary("z"), .linkedLibrary("lz4"), .linkedLibrary("zstd")]
        ),
        .target(name: "SwiftletSys", dependencies: ["CSwiftlet"]),
        .target(name: "SwiftletPersist"),
        // Strict memory safety: every unsafe construct is marked `unsafe`, with a `// SAFETY:` line.
        .target(name: "SwiftletMemory", dependencies: ["SwiftletSys", "CSwiftlet"], swiftSettings: [.strictMemorySafety()]),
        .target(name: "SwiftletX86", dependencies: ["SwiftletMemory", "SwiftletSys", "CDecompress"]),
        .target(name: "SwiftletKVM", dependencies: ["SwiftletSys", "SwiftletMemory", "SwiftletPersist", "CSwiftlet"], swiftSettings: [.strictMemorySafety()]),
        .target(name: "SwiftletDevices", dependencies: ["SwiftletSys", "SwiftletPersist", "CSwiftlet"]),
        .target(name: "SwiftletVirtio", dependencies: ["SwiftletMemory", "SwiftletSys", "SwiftletDevices", "SwiftletPersist", "CSwiftlet"], swiftSettings: [.strictMemorySafety()]),
        .target(
            name: "SwiftletVMM",
            dependencies: ["SwiftletSys", "SwiftletMemory", "SwiftletX86", "SwiftletKVM", "SwiftletDevices", "SwiftletVirtio", "SwiftletPersist", "CSwiftlet"]
        ),
        .target(name: "SwiftletSandbox", dependencies: ["SwiftletVMM", "SwiftletSys", "CSwiftlet"]),
        .target(name: "SwiftletImage", dependencies: ["SwiftletSys", "SwiftletX86", "CDecompress", "CSwiftlet"]),
        .target(name: "CSeccomp", linkerSettings: [.linkedLibrary("seccomp")]),
        .target(name: "SwiftletSeccomp", dependencies: ["CSeccomp", "CSwiftlet", "SwiftletSys"]),
        .target(name: "CJail"),
        .target(name: "SwiftletJail", dependencies: ["CJail", "SwiftletSys"]),
        // Test-only: jails itself as configured and prints what it sees (the jail tests); not a product.
        .executableTarget(name: "swiftlet-jail-probe", dependencies: ["SwiftletJail", "SwiftletSys"]),
        // Test-only: installs one role's filter and makes one syscall (the seccomp tests); not a product.
        // `swiftlet-seccomp-probe generate` prints Filters.generated.swift.
        .executableTarget(name: "swiftlet-seccomp-probe", dependencies: ["SwiftletSeccomp", "SwiftletVirtio", "SwiftletMemory", "SwiftletSys", "CSeccomp", "CSwiftlet"]),
        .executableTarget(
            name: "swiftlet",
            dependencies: [
                "SwiftletVMM", "SwiftletSandbox", "SwiftletImage", "SwiftletSeccomp", "SwiftletJail", "SwiftletSys", "SwiftletX86", "CSwiftlet",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            // The release build's lld --symbol-ordering-file (Makefile, RELEASE_FLAGS).
            exclude: ["link-order.txt"]
        ),
        .target(name: "CRunner"),
        .target(
            name: "SwiftletRunner",
            dependencies: [
                "CRunner", "SwiftletSys",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ]
        ),
        .executableTarget(
            name: "swiftletd",
            dependencies: [
                "SwiftletRunner", "SwiftletSys",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            resources: [.copy("openapi.yaml")]
        ),
        // Test-only: the fake virtio driver and device, ring layouts, temporary images, the KVM gate.
        .target(name: "SwiftletTestSupport", dependencies: ["SwiftletVirtio", "SwiftletMemory"], path: "Tests/SwiftletTestSupport"),
        .testTarget(name: "SwiftletRunnerTests", dependencies: ["SwiftletRunner"]),
        .testTarget(name: "SwiftletdTests", dependencies: ["swiftletd"]),
        .testTarget(name: "SwiftletSysTests", dependencies: ["SwiftletSys", "CSwiftlet"]),
        .testTarget(name: "SwiftletX86Tests", dependencies: ["SwiftletX86", "SwiftletMemory"]),
        .testTarget(name: "SwiftletDevicesTests", dependencies: ["SwiftletDevices"]),
        .testTarget(name: "SwiftletMemoryTests", dependencies: ["SwiftletMemory"]),
        .testTarget(name: "SwiftletKVMTests", dependencies: ["SwiftletKVM", "SwiftletMemory", "SwiftletPersist", "SwiftletTestSupport", "CSwiftlet"]),
        .testTarget(name: "SwiftletVirtioTests", dependencies: ["SwiftletVirtio", "SwiftletMemory", "SwiftletSys", "SwiftletTestSupport"]),
        .testTarget(name: "SwiftletCLITests", dependencies: ["SwiftletSys", "SwiftletTestSupport"]),
        .testTarget(name: "SwiftletImageTests", dependencies: ["SwiftletImage", "SwiftletSys", "SwiftletX86", "CDecompress"]),
        .testTarget(name: "SwiftletSandboxTests", dependencies: ["SwiftletSandbox", "SwiftletSys"]),
        .testTarget(name: "SwiftletSeccompTests", dependencies: ["SwiftletSeccomp", "SwiftletSys"]),
        .testTarget(name: "SwiftletJailTests", dependencies: ["SwiftletJail", "SwiftletSys"]),
        .testTarget(
            name: "SwiftletVMMTests",
            dependencies: ["SwiftletVMM", "SwiftletKVM", "SwiftletMemory", "SwiftletX86", "SwiftletSys", "SwiftletVirtio", "SwiftletPersist",
                           "SwiftletTestSupport", "CSwiftlet"],
            exclude: ["Guests/syscall-cpl.S", "Fixtures"]
        ),
    ]
)
