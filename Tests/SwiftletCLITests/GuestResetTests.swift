import Glibc
import Testing
import SwiftletTestSupport

/// A job inside the guest resets devices by unbinding and rebinding their
/// drivers (the driver writes 0 to the virtio-mmio status register, on a vCPU
/// thread). Under `--seccomp strict` the VMM must survive each reset with the
/// device working again; the vsock device carries the agent's connection, so
/// its reset ends `run` with 125 and one line naming it. Before the fix, the
/// vsock reset closed sockets on the vCPU thread and seccomp killed the VMM
/// (status 159, SIGSYS).
@Suite(.serialized, .enabled(if: KVMGate.enabled, KVMGate.skipMessage))
struct GuestResetTests {
    static let marker = "swiftlet-reset-test"

    static let job = """
    mount -t sysfs sys /sys 2>/dev/null
    rebind() {
        d=$(basename $(readlink -f $1)); drv=$(basename $(readlink -f /sys/bus/virtio/devices/$d/driver))
        echo $d > /sys/bus/virtio/drivers/$drv/unbind && echo $d > /sys/bus/virtio/drivers/$drv/bind && echo "rebound $drv"
    }
    rebind /sys/block/vdb/device
    sleep 1
    [ "$(head -c \(marker.utf8.count) /dev/vdb)" = \(marker) ] && echo blk-ok
    rebind /sys/class/net/eth0/device
    sleep 1
    ip addr add $SWIFTLET_GUEST_IP/30 dev eth0; ip link set eth0 up
    ping -c 1 -W 10 $SWIFTLET_HOST_IP >/dev/null && echo net-ok
    sleep 1
    for d in /sys/bus/virtio/devices/*; do [ "$(cat $d/device)" = 0x0013 ] && echo $(basename $d) > $d/driver/unbind; done
    sleep 5
    echo not-reached
    """

    @Test("a job rebinds the data drive's and the NIC's drivers, then unbinds vsock: the VMM survives, run ends with 125 and one line")
    func rebindEveryDevice() throws {
        try #require(access(Images.bzImage, R_OK) == 0 && access(Images.rootfs, R_OK) == 0, "run `make images` first")
        let ns = try NetNamespace()
        let image = try CLI.writeFile(Array(Self.marker.utf8) + [UInt8](repeating: 0, count: (1 << 20) - Self.marker.utf8.count))
        defer { unlink(image) }
        let r = try ns.swiftlet(["run", "--seccomp", "strict", "--net", "auto", "--drive", image, "--", "sh", "-c", Self.job])
        #expect(r.status == 125, "stderr: \(r.stderr)")
        #expect(r.stdout == "rebound virtio_blk\nblk-ok\nrebound virtio_net\nnet-ok\n", "stderr: \(r.stderr)")
        #expect(r.stderrLines == ["swiftlet: error: the guest reset the agent's vsock device before the command finished"])
        #expect(ns.taps.isEmpty, "TAP removed")
    }
}
