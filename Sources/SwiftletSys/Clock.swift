import CSwiftlet
import Glibc

/// Monotonic time, in nanoseconds.
public enum Clock {
    /// Now, on CLOCK_MONOTONIC.
    @inlinable public static func monotonicNanos() -> UInt64 { swl_monotonic_ns() }
    /// When the process started, taken by a C constructor before any Swift code ran.
    public static var processStartNanos: UInt64 { swl_process_start_ns() }
    /// Microseconds since the process started.
    public static func microsSinceStart() -> UInt64 { (monotonicNanos() &- processStartNanos) / 1000 }
    /// CPU time used by the whole process, in nanoseconds.
    public static func processCPUNanos() -> UInt64 { swl_process_cpu_ns() }

    /// The CLOCK_MONOTONIC deadline `seconds` from now: the one place a
    /// duration becomes nanoseconds. Saturates instead of trapping: NaN or
    /// a negative duration is now, an infinite or huge one never comes.
    public static func deadline(afterSeconds seconds: Double) -> UInt64 {
        let now = monotonicNanos()
        guard seconds > 0 else { return now }
        let nanos = seconds * 1e9
        guard nanos < Double(UInt64.max - now) else { return .max }
        return now + UInt64(nanos)
    }

    /// `nanos` as milliseconds with `digits` decimals (0 to 6), rounded
    /// half up: "12.3" for 12_345_678 and 1. Integer arithmetic, since
    /// `String(format:)` costs tens of microseconds on a hot path.
    public static func millisecondsText(_ nanos: UInt64, digits: Int) -> String {
        let digits = min(max(digits, 0), 6)
        var scale: UInt64 = 1_000_000, power: UInt64 = 1
        for _ in 0..<digits { scale /= 10; power *= 10 }
        let units = nanos / scale + (nanos % scale >= scale / 2 && scale > 1 ? 1 : 0)
        guard digits > 0 else { return String(units) }
        let fraction = String(units % power)
        return "\(units / power)." + String(repeating: "0", count: digits - fraction.count) + fraction
    }

    /// CLOCK_REALTIME in nanoseconds since the epoch.
    public static func realtimeNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
