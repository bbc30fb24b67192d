/// A kernel image as given by the user: a bzImage or a vmlinux ELF.
public struct KernelImage: Sendable {
    /// What kind of image it is.
    public enum Format: Sendable, Equatable {
        /// A bzImage: its setup header and how its payload is stored.
        case bzImage(SetupHeader, KernelCompression)
        /// A plain vmlinux ELF.
        case elf
    }

    /// The detected format.
    public let format: Format
    /// The whole image file.
    public let bytes: [UInt8]

    /// The bzImage's setup header, nil for an ELF.
    public var setupHeader: SetupHeader? {
        if case let .bzImage(header, _) = format { return header }
        return nil
    }

    /// Recognises and validates `bytes` as an ELF or a bzImage.
    ///
    /// A bzImage's payload format is checked here too, so an unsupported
    /// compression fails before any guest memory is set up.
    public static func parse(_ bytes: [UInt8]) throws(X86BootError) -> KernelImage {
        let format = try bytes.withBytes { (b) throws(X86BootError) -> Format in
            if ELFLoader.isELF(b) { return .elf }
            let header = try SetupHeader.parse(b)
            let payload = UnsafeRawBufferPointer(rebasing: b[header.payloadRange])
            return .bzImage(header, try KernelCompression.detect(payload))
        }
        return KernelImage(format: format, bytes: bytes)
    }

    /// The vmlinux ELF: the image itself, or the decompressed bzImage payload.
    public func vmlinux() throws(X86BootError) -> [UInt8] {
        guard case let .bzImage(header, _) = format else { return bytes }
        // parse() checked the payload range against the file.
        return try bytes.withBytes { (b) throws(X86BootError) in
            try Decompressor.decompress(UnsafeRawBufferPointer(rebasing: b[header.payloadRange]))
        }
    }
}
