import ArgumentParser
import SwiftletVMM

/// The ranges every numeric option is checked against at parse time, so that
/// no value (inf, nan, a negative or a huge number) reaches the arithmetic
/// after it: each bad one is one line and status 1 (125 for `run`).
enum OptionLimits {
    /// The longest duration an option takes: a year.
    static let maxSeconds: Double = 365 * 24 * 3600

    /// A duration: finite, above 0, at most a year.
    static func seconds(_ value: Double?, _ option: String) throws {
        guard let v = value else { return }
        guard v.isFinite, v > 0, v <= maxSeconds else {
            throw ValidationError("\(option) must be a number of seconds above 0 and at most \(Int(maxSeconds)), not \(v)")
        }
    }

    /// Guest memory and vCPUs, by the machine's own rules.
    static func guest(memoryMiB: Int?, vcpus: Int?) throws {
        do {
            if let m = memoryMiB { try MachineConfig.validate(memoryMiB: m) }
            if let n = vcpus { try MachineConfig.validate(vcpuCount: n) }
        } catch {
            throw ValidationError("\(error)")
        }
    }
}
