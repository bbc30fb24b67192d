import SwiftletSys

/// The boot-timer device: the guest writes the byte 123 at its base to mark
/// that boot reached userspace, and Swiftlet records the time since the VMM
/// process started (the same protocol as Firecracker's boot timer at 0xC000_0000).
public final class BootTimer: BusDevice {
    /// The byte the guest writes.
    public static let magic: UInt8 = 123
    private let onBoot: @Sendable (_ wallMicros: UInt64, _ cpuMicros: UInt64) -> Void

    /// - Parameter onBoot: receives microseconds of wall time since the process
    ///   started, and of CPU time used by the process so far.
    public init(onBoot: @escaping @Sendable (_ wallMicros: UInt64, _ cpuMicros: UInt64) -> Void) {
        self.onBoot = onBoot
    }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        for i in data.indices { data[i] = 0 }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset == 0, data.count == 1, data[0] == BootTimer.magic else { return }
        onBoot(Clock.microsSinceStart(), Clock.processCPUNanos() / 1000)
    }
}
