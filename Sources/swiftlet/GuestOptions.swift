import ArgumentParser
import SwiftletSeccomp

/// The options every command that starts a guest takes alike (`boot`, `run`,
/// `snapshot create`, `snapshot cached`), declared once. Each command keeps
/// what differs: its rootfs (read-only, never modified, or ephemeral), its
/// drives and time limits. ArgumentParser builds this only for help and
/// errors; `boot` and `run` start from the fast parser, which
/// `FastParseTests.parsersAgree` holds to these declarations.
struct GuestOptions: ParsableArguments {
    @Option(help: "Kernel: a bzImage or an uncompressed ELF vmlinux. Default: the image built by `make kernel`.")
    var kernel: String?

    @Option(help: "Guest memory in MiB (default: 128; `run --snapshot`: the snapshot's).")
    var mem: Int?

    @Option(help: "Number of vCPUs (default: 1; `run --snapshot`: the snapshot's).")
    var cpus: Int?

    @Option(help: "Add to the default kernel command line.")
    var append: String?

    @Option(help: ArgumentHelp("Syscall filters on every VMM thread: strict (a syscall outside its thread's allowlist kills the VMM), log (it runs, and is reported on stderr by thread role at the end), off (debugging only).", valueName: "strict|log|off"))
    var seccomp: String = Seccomp.defaultModeName
}
