#!/bin/sh
# virtio-net benchmark: TCP throughput guest->host and host->guest, and the
# round trip of a small request and reply (ICMP echo, 56 bytes), for one guest
# on `--net auto`, all inside a network namespace this script creates and
# deletes (no traffic leaves it). Needs root, busybox on the host, the images.
#
#   benchmarks/net/run.sh [MiB]          # default 2 MiB each way
#   SWIFTLET=.build/release/swiftlet benchmarks/net/run.sh 8
#
# The QEMU microvm ratio the issue asks for is blocked on this host: QEMU's
# microvm cannot boot our kernel here (see kernels/README.md).
set -eu
MIB=${1:-2}
BIN=${SWIFTLET:-$(pwd)/.build/release/swiftlet}
NS=swlbench-$$
DIR=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; ip netns del $NS 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT INT TERM
ip netns add $NS
head -c $((MIB << 20)) /dev/urandom > "$DIR/in"
mkfifo "$DIR/fifo"
# Host: a sender on 7000 and a receiver on 7001 (stdin a FIFO held open, so it never half-closes early).
ip netns exec $NS sh -c "exec 3<>$DIR/fifo; busybox nc -l -p 7000 < $DIR/in & busybox nc -l -p 7001 <&3 > $DIR/out & wait" &
sleep 0.3
ip netns exec $NS "$BIN" run --mem 256 --net auto -- sh -c '
H=$SWIFTLET_HOST_IP; N='$((MIB << 20))'; mkfifo /tmp/f; exec 3<>/tmp/f
up() { cut -d" " -f1 /proc/uptime; }
t0=$(up); got=$(nc $H 7000 <&3 | wc -c); t1=$(up)
head -c $N /dev/zero | nc $H 7001; t2=$(up)
rtt=$(ping -c 20 -i 0.2 $H | tail -1)
awk "BEGIN { printf \"host-to-guest-MiBps=%.3f (%d bytes, %.1f s)\n\", $got/1048576/($t1-$t0), $got, $t1-$t0;
             printf \"guest-to-host-MiBps=%.3f (%.1f s)\n\", $N/1048576/($t2-$t1), $t2-$t1 }"
echo "ping-rtt: $rtt"
' < /dev/null
wait
echo "guest-to-host bytes received: $(wc -c < "$DIR/out")"
