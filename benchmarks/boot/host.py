"""What the boot benchmarks record of the host they ran on (suite.py, bench.py)."""
import os


def cpu_and_kvm():
    """The CPU model, and which KVM this is: nested PVM (the guest kernel
    emulated), hardware, or unknown."""
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    if os.path.exists("/sys/module/kvm_pvm"):
        kvm = "nested PVM (kvm_pvm): guest kernel runs through KVM's instruction emulator"
    elif "vmx" in flags or "svm" in flags:
        kvm = "hardware (vmx/svm)" + (" under a hypervisor" if "hypervisor" in flags else "")
    else:
        kvm = "unknown (no vmx/svm, no kvm_pvm)"
    return cpu, kvm
