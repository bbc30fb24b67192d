import Glibc
import Testing
@testable import SwiftletVMM

/// A vCPU whose `KVM_RUN` returns at once, over and over, without an exit and
/// without a kick, must end the machine with one clear error, not spin.
struct SpinDetectorTests {
    @Test("returns nobody explains end the machine at the limit, naming the errno")
    func endsAtTheLimit() {
        var d = SpinDetector()
        for _ in 1..<SpinDetector.limit {
            #expect(d.check(.interrupted(errno: EAGAIN), kicks: 0, vcpu: 0) == nil)
        }
        let end = d.check(.interrupted(errno: EAGAIN), kicks: 0, vcpu: 0)
        #expect(end == .vmmError("vCPU 0: KVM_RUN returned \(SpinDetector.limit) times in a row without running the guest (Resource temporarily unavailable)"))
    }

    @Test("a kick between returns explains them: a halted vCPU probed for minutes never trips it")
    func kicksExplainReturns() {
        var d = SpinDetector()
        for k in 0..<UInt64(3 * SpinDetector.limit) {
            #expect(d.check(.interrupted(errno: EINTR), kicks: k + 1, vcpu: 1) == nil)
        }
    }

    @Test("a spin is caught even while the halt probe kicks the vCPU every 20 ms (thousands of returns per kick)")
    func spinBetweenProbeKicks() {
        var d = SpinDetector()
        var end: MachineExit?
        var returns = 0
        while end == nil && returns < 10 * SpinDetector.limit {
            returns += 1
            end = d.check(.interrupted(errno: EAGAIN), kicks: UInt64(returns / 4000), vcpu: 0)
        }
        #expect(end != nil)
        #expect(returns == SpinDetector.limit, "caught at the limit, not later")
    }

    @Test("any real exit starts the count again")
    func exitsReset() throws {
        var d = SpinDetector()
        var data: UInt8 = 0
        try withUnsafeMutableBytes(of: &data) { buf in
            for round in 0..<3 {
                for _ in 1..<SpinDetector.limit {
                    #expect(d.check(.interrupted(errno: 0), kicks: 7, vcpu: 0) == nil)
                }
                #expect(d.check(.io(port: 0x3f8, isWrite: true, data: buf), kicks: 7, vcpu: 0) == nil, "round \(round)")
            }
            try #require(d.check(.interrupted(errno: 0), kicks: 7, vcpu: 0) == nil)
        }
    }
}
