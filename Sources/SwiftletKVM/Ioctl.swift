import Glibc
import SwiftletSys

/// ioctl with a pointer argument, retried on EINTR, errno turned into `KVMError`.
@inlinable
func kvmIoctl(_ fd: Int32, _ request: UInt, _ arg: UnsafeMutableRawPointer, _ name: @autoclosure () -> String) throws(KVMError) -> Int32 {
    do {
        // SAFETY: `arg` points at the struct the request's number says (CSwiftlet defines each request with its
        // argument type).
        return try retryingEINTR("ioctl(\(name()))") { unsafe ioctl(fd, request, arg) }
    } catch {
        throw .system(error)
    }
}

/// ioctl with no argument.
@inlinable
func kvmIoctl(_ fd: Int32, _ request: UInt, _ name: @autoclosure () -> String) throws(KVMError) -> Int32 {
    do {
        return try retryingEINTR("ioctl(\(name()))") { ioctl(fd, request) }
    } catch {
        throw .system(error)
    }
}

/// ioctl with an integer argument.
@inlinable
func kvmIoctl(_ fd: Int32, _ request: UInt, value: Int32, _ name: @autoclosure () -> String) throws(KVMError) -> Int32 {
    do {
        return try retryingEINTR("ioctl(\(name()))") { ioctl(fd, request, value) }
    } catch {
        throw .system(error)
    }
}

/// ioctl taking `&value` for any struct.
@inlinable
func kvmIoctl<T>(_ fd: Int32, _ request: UInt, _ value: inout T, _ name: @autoclosure () -> String) throws(KVMError) -> Int32 {
    // SAFETY: `value` is the request's own argument struct, alive for the whole call.
    unsafe try withUnsafeMutableBytes(of: &value) { (p) throws(KVMError) -> Int32 in
        unsafe try kvmIoctl(fd, request, p.baseAddress!, name())
    }
}
