import Testing
import SwiftletSys

@Suite struct ClockTests {
    @Test(arguments: [
        (UInt64(12_345_678), 1, "12.3"), (12_350_000, 1, "12.4"), (49_999, 1, "0.0"), (50_000, 1, "0.1"),
        (1_000_000, 3, "1.000"), (1_234_499, 3, "1.234"), (1_234_500, 3, "1.235"), (999_999_500, 3, "1000.000"),
        (7, 6, "0.000007"), (1_499_999, 0, "1"), (1_500_000, 0, "2"), (0, 3, "0.000"),
    ])
    func millisecondsText(nanos: UInt64, digits: Int, text: String) {
        #expect(Clock.millisecondsText(nanos, digits: digits) == text)
    }
}
