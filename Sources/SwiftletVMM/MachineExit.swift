/// How a machine ended.
public enum MachineExit: Equatable, Sendable, CustomStringConvertible {
    /// Every vCPU halted with interrupts disabled: Linux's power-off and halt
    /// end this way on a machine without ACPI.
    case poweredOff
    /// The guest reset the machine through the i8042 after shutting down
    /// its local APICs: a clean `reboot`.
    case rebooted
    /// The guest reset the machine with its local APIC still enabled: the
    /// emergency-restart path, which Linux takes after a panic (`panic=-1`).
    case panicked
    /// A vCPU triple-faulted.
    case tripleFault(vcpu: Int)
    /// KVM failed to emulate a guest instruction that Swiftlet cannot complete.
    case emulationFailure(vcpu: Int, rip: UInt64, bytes: [UInt8])
    /// KVM or the VMM failed while running the guest.
    case vmmError(String)
    /// The host stopped the machine (a signal, a timeout, the console escape).
    case stopped(String)
    /// The host paused the machine to snapshot it (`Machine.pause`).
    case paused

    /// True for the endings a guest asks for on purpose.
    public var isClean: Bool {
        switch self {
        case .poweredOff, .rebooted: return true
        default: return false
        }
    }

    public var description: String {
        switch self {
        case .poweredOff: return "guest powered off"
        case .rebooted: return "guest rebooted"
        case .panicked: return "guest kernel panicked (emergency reset)"
        case let .tripleFault(v): return "vCPU \(v) triple-faulted"
        case let .emulationFailure(v, rip, bytes):
            let hex = bytes.map { b in (b < 16 ? "0" : "") + String(b, radix: 16) }.joined(separator: " ")
            return "vCPU \(v): KVM could not emulate the instruction at RIP 0x\(String(rip, radix: 16)) [\(hex)]"
        case let .vmmError(why): return "VMM error: \(why)"
        case let .stopped(why): return "stopped: \(why)"
        case .paused: return "paused for a snapshot"
        }
    }
}
