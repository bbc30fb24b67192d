#!/usr/bin/env bash
# Build the Swiftlet guest root filesystem: rootfs.ext4 + initramfs.cpio (busybox,
# swiftlet-init and swiftlet-agent), agent-initramfs.cpio (swiftlet-init and
# swiftlet-agent only, to run jobs in a user's image: `SWIFTLET_IMAGE=`), plus a
# native swiftlet-agent for host-side tests.
#
#   rootfs/build.sh              build (or reuse) and point $CACHE/default/* at the outputs
#   rootfs/build.sh --print-dir  print the output directory only (builds nothing)
#
# Outputs are content-addressed under $CACHE/rootfs/<key>/, key = first 16 hex of
# sha256(rootfs/ sources except *.md and the agent's tests, busybox-static version, gcc version).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="$(realpath -m "${SWIFTLET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/swiftlet}")"
busybox=/bin/busybox
size_mib=32

print_dir=0
case "${1:-}" in
  "") ;;
  --print-dir) print_dir=1 ;;
  -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--print-dir]" >&2; exit 2 ;;
esac

log() { echo "rootfs: $*" >&2; }
die() { echo "rootfs: error: $*" >&2; exit 1; }

is_static_busybox() {
  [[ -x $busybox ]] && ! LC_ALL=C readelf -l "$busybox" 2>/dev/null | grep -q 'INTERP'
}

ensure_deps() {
  local missing=()
  is_static_busybox || missing+=(busybox-static)
  command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
  command -v cpio >/dev/null || missing+=(cpio)
  command -v gcc >/dev/null || missing+=(gcc)
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get; install them manually"
  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || die "missing ${missing[*]}; run as root or install them"
    sudo=(sudo -n)
  fi
  log "installing ${missing[*]}"
  local apt=(env DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -y -q --no-install-recommends)
  # Only refresh package lists when there are none, or when the install fails with stale ones.
  if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then
    "${sudo[@]}" apt-get -q update </dev/null >&2
  fi
  if ! "${apt[@]}" install "${missing[@]}" </dev/null >&2; then
    "${sudo[@]}" apt-get -q update </dev/null >&2
    "${apt[@]}" install "${missing[@]}" </dev/null >&2
  fi
  is_static_busybox || die "$busybox is not a static busybox (is the dynamic 'busybox' package shadowing busybox-static?)"
}

compute_key() {
  local bb_ver gcc_ver
  bb_ver="$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || true)"
  [[ -n $bb_ver ]] || bb_ver="$("$busybox" --help 2>&1 | head -n1)"
  gcc_ver="$(gcc -dumpfullversion 2>/dev/null || gcc -dumpversion)"
  {
    # Docs and tests don't change the image, so they are left out of the key.
    (cd "$here" && find . -type f ! -name '*.md' ! -path './agent/test.sh' ! -path './agent/test/*' -print0 |
      LC_ALL=C sort -z | xargs -0 sha256sum)
    echo "busybox $bb_ver"
    echo "gcc $gcc_ver"
    echo "root $((EUID == 0))" # non-root builds lack device nodes (see below)
    echo "abi ${SWIFTLET_INIT_ABI:-syscall}"
  } | sha256sum | cut -c1-16
}

ensure_deps
key="$(compute_key)"
out="$cache/rootfs/$key"
if ((print_dir)); then echo "$out"; exit 0; fi

link_default() {
  mkdir -p "$cache/default"
  ln -sfn "$out/rootfs.ext4" "$cache/default/rootfs.ext4"
  ln -sfn "$out/initramfs.cpio" "$cache/default/initramfs.cpio"
  ln -sfn "$out/swiftlet-agent" "$cache/default/swiftlet-agent"
  ln -sfn "$out/agent-initramfs.cpio" "$cache/default/agent-initramfs.cpio"
}

complete() { # DIR has every output
  [[ -f $1/rootfs.ext4 && -f $1/initramfs.cpio && -f $1/swiftlet-agent && -f $1/agent-initramfs.cpio ]]
}

if complete "$out"; then
  link_default
  echo "rootfs: cached at $out"
  exit 0
fi

mkdir -p "$cache/rootfs"
stage="$(mktemp -d "${TMPDIR:-/tmp}/swiftlet-rootfs.XXXXXX")"
# The output is assembled next to its final place (same filesystem) so the last mv is atomic.
tmpout="$(mktemp -d "$cache/rootfs/.tmp-$key.XXXXXX")"
trap 'rm -rf "$stage" "$tmpout"' EXIT
root="$stage/root"

log "building $key"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc,mnt}
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"

# swiftlet-init: freestanding, static, non-PIE at 0x400000 so that all its addresses would
# also fit the 32-bit int $0x80 ABI (see init/init.c). The default is the standard 64-bit
# `syscall` ABI: on nested PVM KVM neither works (README.md), and on hardware KVM `syscall`
# is the right one. SWIFTLET_INIT_ABI=int80 builds the int $0x80 variant for experiments.
# Compiled into the temp dir, never into the repo.
# The compiler flags (include/freestanding.flags) are shared with swiftlet-agent and
# rootfs/agent/test.sh.
mapfile -t cflags <"$here/include/freestanding.flags"
abi_flag=-DSWL_SYSCALL_INSN
[[ ${SWIFTLET_INIT_ABI:-syscall} == int80 ]] && abi_flag=
gcc $abi_flag "${cflags[@]}" -o "$stage/swiftlet-init" "$here/init/init.c"
while read -r type _ vaddr _ _ memsz _; do
  if [[ $type == LOAD ]] && ((vaddr + memsz > 0xffffffff)); then die "swiftlet-init: PT_LOAD above 4 GiB"; fi
done < <(LC_ALL=C readelf -lW "$stage/swiftlet-init")
install -m 0755 "$stage/swiftlet-init" "$root/sbin/init"
ln -s /sbin/init "$root/init" # initramfs entry point (the kernel runs /init from an initramfs)

# swiftlet-agent (agent/agent.c, agent/PROTOCOL.md): the same kind of freestanding static
# binary, always with the `syscall` ABI. init execs it when the kernel command line has
# SWIFTLET_AGENT=<port>. swiftlet-vsock is the same binary (it looks at argv[0]).
gcc -DSWL_SYSCALL_INSN "${cflags[@]}" -o "$stage/swiftlet-agent" "$here/agent/agent.c"
if LC_ALL=C readelf -lW "$stage/swiftlet-agent" | grep -qE 'INTERP|DYNAMIC'; then die "swiftlet-agent is not static"; fi
install -m 0755 "$stage/swiftlet-agent" "$root/sbin/swiftlet-agent"
ln -s /sbin/swiftlet-agent "$root/usr/bin/swiftlet-vsock"
# A native copy: host-side tests run it with --unix (it then never powers off).
install -m 0755 "$stage/swiftlet-agent" "$tmpout/swiftlet-agent"

install -m 0755 "$busybox" "$root/bin/busybox"
# Applet links in their usual dirs; `init` and `linuxrc` are skipped: /sbin/init is ours.
while IFS= read -r applet; do
  case "$applet" in init | linuxrc | */init | */linuxrc | bin/busybox) continue ;; esac
  [[ -e $root/$applet || -L $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
done < <("$busybox" --list-full)

if ((EUID == 0)); then
  mknod -m 0600 "$root/dev/console" c 5 1
  mknod -m 0666 "$root/dev/null" c 1 3
  mknod -m 0640 "$root/dev/mem" c 1 1
  # For jobs run by the agent (which also seeds the RNG through /dev/urandom).
  mknod -m 0666 "$root/dev/zero" c 1 5
  mknod -m 0666 "$root/dev/full" c 1 7
  mknod -m 0666 "$root/dev/random" c 1 8
  mknod -m 0666 "$root/dev/urandom" c 1 9
  mknod -m 0666 "$root/dev/tty" c 5 0
else
  # swiftlet-init then mounts devtmpfs on /dev itself (a few ms slower), and files are
  # owned by the building user instead of root in rootfs.ext4.
  log "warning: not root: no device nodes in /dev, files not owned by root"
fi

echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
echo swiftlet >"$root/etc/hostname"

# ext4 without a journal: the image is tiny and mostly read at boot; a journal would cost
# 4 MiB of the image, a jbd2 thread and journal checks at mount time, for crash safety the
# throwaway guest disk doesn't need. Sparse file, 4 KiB blocks, no mounting needed (-d).
truncate -s "${size_mib}M" "$tmpout/rootfs.ext4"
mkfs.ext4 -q -F -b 4096 -m 0 -L swiftlet-root -O ^has_journal -E root_owner=0:0 \
  -d "$root" "$tmpout/rootfs.ext4"

# Uncompressed newc: the guest kernel unpacks it with no decompression cost.
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$tmpout/initramfs.cpio"

# agent-initramfs.cpio: just init and the agent, for jobs in a user's root filesystem that
# has neither: init mounts the image (SWIFTLET_IMAGE=) on /image, switches to it and runs
# the agent from here. No busybox. Init is /sbin/init (Swiftlet's initramfs command line
# has rdinit=/sbin/init) and /init (the kernel's default), as in initramfs.cpio. Of the
# device nodes only the console (when root), for the kernel's fds 0-2: with no /dev/mem,
# init mounts devtmpfs on /dev, which has the image's block device.
aroot="$stage/agent-root"
mkdir -p "$aroot"/{sbin,dev,proc,sys,image}
install -m 0755 "$stage/swiftlet-init" "$aroot/sbin/init"
ln -s /sbin/init "$aroot/init"
install -m 0755 "$stage/swiftlet-agent" "$aroot/sbin/swiftlet-agent"
if ((EUID == 0)); then mknod -m 0600 "$aroot/dev/console" c 5 1; fi
(cd "$aroot" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$tmpout/agent-initramfs.cpio"

chmod 0755 "$tmpout"
if ! mv -T "$tmpout" "$out" 2>/dev/null; then
  complete "$out" || die "could not move output into $out"
  log "another build finished first; using it"
fi
link_default
echo "rootfs: built at $out"
