import Synchronization

/// A 16550A-compatible UART, as the guest's console (COM1 at 0x3f8, IRQ 4).
///
/// Output goes to `output` a byte at a time; input is queued with `enqueueInput`.
/// `raiseInterrupt` is called on each rising edge of the UART's interrupt line.
public final class Serial8250: BusDevice {
    /// Register offsets from the base port.
    enum Reg {
        static let data: UInt64 = 0      // RBR / THR, or DLL with DLAB
        static let ier: UInt64 = 1       // IER, or DLM with DLAB
        static let iirFcr: UInt64 = 2
        static let lcr: UInt64 = 3
        static let mcr: UInt64 = 4
        static let lsr: UInt64 = 5
        static let msr: UInt64 = 6
        static let scratch: UInt64 = 7
    }
    enum IER {
        static let rxAvailable: UInt8 = 0x01
        static let thrEmpty: UInt8 = 0x02
        static let mask: UInt8 = 0x0f
    }
    enum IIR {
        static let none: UInt8 = 0x01
        static let thrEmpty: UInt8 = 0x02
        static let rxAvailable: UInt8 = 0x04
        static let fifoEnabled: UInt8 = 0xc0
    }
    enum LSR {
        static let dataReady: UInt8 = 0x01
        static let thrEmpty: UInt8 = 0x20
        static let idle: UInt8 = 0x40
    }
    static let lcrDLAB: UInt8 = 0x80
    static let mcrLoop: UInt8 = 0x10
    /// Bytes of input held before `enqueueInput` reports the FIFO full.
    public static let inputCapacity = 64

    struct State {
        var ier: UInt8 = 0
        var lcr: UInt8 = 0x03
        var mcr: UInt8 = 0x08
        var scratch: UInt8 = 0
        var dll: UInt8 = 0x0c
        var dlm: UInt8 = 0
        var fifoEnabled = false
        var thrInterruptPending = false
        var rx: [UInt8] = []
        var rxHead = 0

        var rxCount: Int { rx.count - rxHead }

        /// The interrupt the UART shows in IIR, highest priority first.
        var pendingIIR: UInt8 {
            if ier & IER.rxAvailable != 0 && rxCount > 0 { return IIR.rxAvailable }
            if ier & IER.thrEmpty != 0 && thrInterruptPending { return IIR.thrEmpty }
            return IIR.none
        }
    }

    private let state = Mutex(State())
    private let output: @Sendable (UInt8) -> Void
    private let raiseInterrupt: @Sendable () -> Void

    /// - Parameters:
    ///   - output: receives every byte the guest transmits.
    ///   - raiseInterrupt: pulses the UART's IRQ line.
    public init(output: @escaping @Sendable (UInt8) -> Void, raiseInterrupt: @escaping @Sendable () -> Void) {
        self.output = output
        self.raiseInterrupt = raiseInterrupt
    }

    /// What a snapshot keeps: `SavedState` (Serial8250+Persist.swift).
    public func saveState() -> SavedState {
        state.withLock { s in
            SavedState(ier: s.ier, lcr: s.lcr, mcr: s.mcr, scratch: s.scratch, dll: s.dll, dlm: s.dlm,
                       fifoEnabled: s.fifoEnabled, thrInterruptPending: s.thrInterruptPending)
        }
    }

    /// Loads saved registers into a UART nobody has used yet. IER keeps only
    /// its defined bits, as a guest write would.
    public func restoreState(_ saved: SavedState) {
        state.withLock { s in
            s.ier = saved.ier & IER.mask
            s.lcr = saved.lcr
            s.mcr = saved.mcr
            s.scratch = saved.scratch
            s.dll = saved.dll
            s.dlm = saved.dlm
            s.fifoEnabled = saved.fifoEnabled
            s.thrInterruptPending = saved.thrInterruptPending
        }
    }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard data.count >= 1 else { return }
        let value: UInt8 = state.withLock { s in
            let dlab = s.lcr & Serial8250.lcrDLAB != 0
            switch offset {
            case Reg.data where dlab: return s.dll
            case Reg.data:
                guard s.rxCount > 0 else { return 0 }
                let b = s.rx[s.rxHead]
                s.rxHead += 1
                if s.rxHead == s.rx.count { s.rx.removeAll(keepingCapacity: true); s.rxHead = 0 }
                return b
            case Reg.ier where dlab: return s.dlm
            case Reg.ier: return s.ier
            case Reg.iirFcr:
                let iir = s.pendingIIR
                // Reading IIR acknowledges a THR-empty interrupt.
                if iir == IIR.thrEmpty { s.thrInterruptPending = false }
                return iir | (s.fifoEnabled ? IIR.fifoEnabled : 0)
            case Reg.lcr: return s.lcr
            case Reg.mcr: return s.mcr
            case Reg.lsr:
                return LSR.thrEmpty | LSR.idle | (s.rxCount > 0 ? LSR.dataReady : 0)
            case Reg.msr:
                if s.mcr & Serial8250.mcrLoop != 0 {
                    // Loopback: modem outputs feed the modem inputs.
                    let m = s.mcr
                    return ((m & 0x02) << 3) | ((m & 0x01) << 5) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
                }
                return 0xb0 // DCD, DSR, CTS: a cable is attached and ready.
            case Reg.scratch: return s.scratch
            default: return 0
            }
        }
        data[0] = value
        for i in 1..<data.count { data[i] = 0 }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard data.count >= 1 else { return }
        let value = data[0]
        var transmit: UInt8? = nil
        let raise: Bool = state.withLock { s in
            let before = s.pendingIIR
            let dlab = s.lcr & Serial8250.lcrDLAB != 0
            switch offset {
            case Reg.data where dlab: s.dll = value
            case Reg.data:
                if s.mcr & Serial8250.mcrLoop != 0 {
                    if s.rxCount < Serial8250.inputCapacity { s.rx.append(value) }
                } else {
                    transmit = value
                }
                s.thrInterruptPending = true
            case Reg.ier where dlab: s.dlm = value
            case Reg.ier:
                let enablingTHR = value & IER.thrEmpty != 0 && s.ier & IER.thrEmpty == 0
                s.ier = value & IER.mask
                // The transmitter is always empty, so enabling its interrupt fires it.
                if enablingTHR { s.thrInterruptPending = true }
            case Reg.iirFcr:
                s.fifoEnabled = value & 0x01 != 0
                if value & 0x02 != 0 { s.rx.removeAll(keepingCapacity: true); s.rxHead = 0 }
            case Reg.lcr: s.lcr = value
            case Reg.mcr: s.mcr = value & 0x1f
            case Reg.scratch: s.scratch = value
            default: break
            }
            let after = s.pendingIIR
            return after != IIR.none && after != before || (transmit != nil && after == IIR.thrEmpty)
        }
        if let b = transmit { output(b) }
        if raise { raiseInterrupt() }
    }

    /// Queues input bytes for the guest. Returns how many were taken; the
    /// caller retries the rest later (the FIFO holds `inputCapacity` bytes).
    @discardableResult
    public func enqueueInput(_ bytes: some Collection<UInt8>) -> Int {
        let (taken, raise): (Int, Bool) = state.withLock { s in
            let before = s.pendingIIR
            let room = max(0, Serial8250.inputCapacity - s.rxCount)
            let n = min(room, bytes.count)
            s.rx.append(contentsOf: bytes.prefix(n))
            return (n, s.pendingIIR == IIR.rxAvailable && before != IIR.rxAvailable)
        }
        if raise { raiseInterrupt() }
        return taken
    }

    /// Free space in the input FIFO.
    public var inputSpace: Int {
        state.withLock { Serial8250.inputCapacity - $0.rxCount }
    }
}
