import Glibc
import SwiftletSys

/// ioctl with a pointer argument, retried on EINTR, errno turned into `KVMError`.
@inlinable
func kvmIoctl(_ fd: Int32, _ request: UInt, _ arg: UnsafeMutableRawPointer, _ name: @autoclosure () -> String) throws(KVMError) -> Int32 {
    do {
        return try retryingEINTR("ioctl(\(name()))") { ioctl(fd, request, arg) }
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
    try withUnsafeMutableBytes(of: &value) { (p) throws(KVMError) -> Int32 in
        try kvmIoctl(fd, request, p.baseAddress!, name())
    }
}
