/// A memory operand of a 64-bit-mode instruction, decoded from its ModRM,
/// SIB and displacement bytes: what the VMM needs to carry out an
/// instruction with a memory operand that KVM's emulator failed on.
public struct MemoryOperand: Equatable, Sendable {
    /// Register numbers 0-15 (RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8-R15).
    public var base: Int?
    public var index: Int?
    public var scale: UInt64 = 1
    public var displacement: Int64 = 0
    /// RIP-relative: the displacement counts from the next instruction.
    public var ripRelative = false
    /// A segment override: 0x64 (FS) or 0x65 (GS), whose base is added.
    public var segmentPrefix: UInt8?

    /// Decodes the ModRM byte at `bytes[at]` and what follows it.
    /// Returns the operand, the ModRM reg field (with REX.R) and the bytes
    /// used; nil for a register operand or bytes that run out.
    static func decode(_ bytes: [UInt8], at start: Int, rex: UInt8) -> (operand: MemoryOperand, reg: Int, length: Int)? {
        guard start < bytes.count else { return nil }
        let modrm = bytes[start]
        let mod = modrm >> 6, rm = Int(modrm & 7)
        let reg = Int((modrm >> 3) & 7) | (rex & 0x4 != 0 ? 8 : 0)
        guard mod != 3 else { return nil }
        var op = MemoryOperand()
        var i = start + 1
        if rm == 4 {
            guard i < bytes.count else { return nil }
            let sib = bytes[i]
            i += 1
            op.scale = 1 << UInt64(sib >> 6)
            let index = Int((sib >> 3) & 7) | (rex & 0x2 != 0 ? 8 : 0)
            if index != 4 { op.index = index } // RSP cannot be an index
            let base = Int(sib & 7)
            if base == 5 && mod == 0 {
                op.base = nil // disp32, no base
            } else {
                op.base = base | (rex & 0x1 != 0 ? 8 : 0)
            }
            if base == 5 && mod == 0 {
                guard let d = disp32(bytes, i) else { return nil }
                op.displacement = d
                i += 4
            }
        } else if rm == 5 && mod == 0 {
            guard let d = disp32(bytes, i) else { return nil }
            op.ripRelative = true
            op.displacement = d
            i += 4
        } else {
            op.base = rm | (rex & 0x1 != 0 ? 8 : 0)
        }
        if mod == 1 {
            guard i < bytes.count else { return nil }
            op.displacement = Int64(Int8(bitPattern: bytes[i]))
            i += 1
        } else if mod == 2 {
            guard let d = disp32(bytes, i) else { return nil }
            op.displacement = d
            i += 4
        }
        return (op, reg, i - start)
    }

    static func disp32(_ bytes: [UInt8], _ i: Int) -> Int64? {
        guard i + 4 <= bytes.count else { return nil }
        let v = UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 24
        return Int64(Int32(bitPattern: v))
    }

    /// The linear address, given the 16 general registers, the address of
    /// the next instruction and the FS/GS bases.
    public func linearAddress(registers: [UInt64], nextRIP: UInt64, fsBase: UInt64, gsBase: UInt64) -> UInt64 {
        var a = UInt64(bitPattern: displacement)
        if ripRelative { a &+= nextRIP }
        if let b = base, b < registers.count { a &+= registers[b] }
        if let x = index, x < registers.count { a &+= registers[x] &* scale }
        if segmentPrefix == 0x64 { a &+= fsBase }
        if segmentPrefix == 0x65 { a &+= gsBase }
        return a
    }
}
