import Glibc

/// A failed system call: the call's name and the errno it left.
///
/// Every module turns errno into an error here, in one place, so that each
/// failure names the call that failed.
public struct SystemError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The call that failed, such as `"ioctl(KVM_RUN)"` or `"open(/dev/kvm)"`.
    public var call: String
    /// The errno value.
    public var errno: Int32

    public init(_ call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    /// Captures the current thread's errno.
    public static func last(_ call: String) -> SystemError {
        SystemError(call, errno: Glibc.errno)
    }

    public var description: String {
        "\(call): \(String(cString: strerror(errno)))"
    }
}

// EINTR is handled here and nowhere else: every system call that a signal can
// interrupt goes through one of these two. (KVM_RUN is the exception: there
// EINTR is the kick that stops a vCPU, an exit the vCPU loop acts on.)

/// Runs `body` until it returns something other than -1 with EINTR.
/// Returns the result, or throws the errno as a `SystemError` naming `call`.
@inlinable
public func retryingEINTR<T: FixedWidthInteger>(_ call: @autoclosure () -> String, _ body: () -> T) throws(SystemError) -> T {
    let result = retryingEINTR(body)
    if result != -1 { return result }
    throw SystemError(call(), errno: Glibc.errno)
}

/// Runs `body` until it returns something other than -1 with EINTR, and returns
/// that result with errno as the call left it: the variant for I/O paths, which
/// read EAGAIN or a short count themselves and must not build an error (or a
/// call name) per transfer.
@inlinable
public func retryingEINTR<T: FixedWidthInteger>(_ body: () -> T) -> T {
    while true {
        let result = body()
        if result != -1 || Glibc.errno != EINTR { return result }
    }
}
