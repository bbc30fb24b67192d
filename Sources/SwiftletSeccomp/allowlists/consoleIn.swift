// The console input pump (`console-in`, `swiftlet boot` only): forwards the
// terminal to the guest UART. The base is `runtime`.
extension Allowlists {
    static let consoleIn = """
    @runtime                               # glibc and Swift runtime basics
    poll                                   # wait for a key or the stop eventfd
    read                                   # the terminal (stdin)
    ioctl KVM_IRQ_LINE                     # raise the UART's interrupt for received bytes
    write                                  # echo through the UART to the console
    """
}
