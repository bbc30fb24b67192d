/// Counts of VM exits that reached userspace, by reason. One per vCPU thread,
/// summed at the end, so the hot path takes no lock.
public struct ExitStats: Sendable {
    public var io = 0
    public var mmio = 0
    public var interrupted = 0
    public var emulationFixups: [EmulationFixup.Instruction: Int] = [:]
    public var other = 0

    public init() {}

    public var total: Int { io + mmio + interrupted + other + emulationFixups.values.reduce(0, +) }

    public mutating func add(_ o: ExitStats) {
        io += o.io; mmio += o.mmio; interrupted += o.interrupted; other += o.other
        for (k, v) in o.emulationFixups { emulationFixups[k, default: 0] += v }
    }
}
