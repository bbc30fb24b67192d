import Synchronization

/// A minimal i8042 keyboard controller, enough for the guest to reset the machine.
///
/// Linux with `reboot=k` writes the pulse-reset command (0xFE) to port 0x64;
/// Swiftlet treats it as the guest asking to reset, and ends the VM.
/// Ports: data at offset 0 (0x60), command/status at offset 4 (0x64).
public final class I8042: BusDevice {
    enum Command {
        static let readControl: UInt8 = 0x20
        static let writeControl: UInt8 = 0x60
        static let selfTest: UInt8 = 0xaa
        static let pulseReset: UInt8 = 0xfe
    }
    static let statusOutputFull: UInt8 = 0x01
    static let statusSystemFlag: UInt8 = 0x04

    struct State {
        var control: UInt8 = 0x01
        var output: UInt8? = nil
        var expectingControl = false
    }
    private let state = Mutex(State())
    private let onReset: @Sendable () -> Void

    /// - Parameter onReset: called from the vCPU thread that wrote 0xFE.
    public init(onReset: @escaping @Sendable () -> Void) {
        self.onReset = onReset
    }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard data.count >= 1 else { return }
        let value: UInt8 = state.withLock { s in
            switch offset {
            case 0:
                let v = s.output ?? 0
                s.output = nil
                return v
            case 4:
                return I8042.statusSystemFlag | (s.output != nil ? I8042.statusOutputFull : 0)
            default:
                return 0xff
            }
        }
        data[0] = value
        for i in 1..<data.count { data[i] = 0 }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard data.count >= 1 else { return }
        let value = data[0]
        let reset: Bool = state.withLock { s in
            switch offset {
            case 4:
                switch value {
                case Command.pulseReset: return true
                case Command.readControl: s.output = s.control
                case Command.writeControl: s.expectingControl = true
                case Command.selfTest: s.output = 0x55
                default: break
                }
            case 0:
                if s.expectingControl {
                    s.control = value
                    s.expectingControl = false
                }
            default: break
            }
            return false
        }
        if reset { onReset() }
    }
}
