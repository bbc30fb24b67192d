#!/usr/bin/env bash
# Build the images the `--image` tests use (Tests/images/README.md says what each holds):
# an OCI layout made with umoci, the same image as a `docker save` archive, rootfs tarballs,
# a directory, an ext4 image, a minimal Debian root (mmdebstrap) and broken OCI layouts.
#
#   Tests/images/build.sh              build (or reuse); print the output directory on stdout
#   Tests/images/build.sh --print-dir  print the output directory only (builds nothing)
#
# Outputs are content-addressed under $SWIFTLET_CACHE/test-images/<key>/, key = first 16 hex
# of sha256(Tests/images/ sources except *.md, the versions of the Debian packages and tools
# used); $SWIFTLET_CACHE/test-images/current links to the last one built or reused.
# Needs root (device nodes, owners); as another user it only warns. Progress goes to stderr.
# SWIFTLET_TEST_IMAGES_KEEP=1 keeps a failed build's .tmp-<key>.* directory, to look at.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="$(realpath -m "${SWIFTLET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/swiftlet}")"
busybox=/bin/busybox
mirror="${SWIFTLET_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm

print_dir=0
case "${1:-}" in
  "") ;;
  --print-dir) print_dir=1 ;;
  -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--print-dir]" >&2; exit 2 ;;
esac

log() { echo "test-images: $*" >&2; }
die() { echo "test-images: error: $*" >&2; exit 1; }

if ((EUID != 0)); then
  # Device nodes, file owners and mmdebstrap's root mode need root. Without it nothing is built:
  # the image tests then skip (and fail under CI=true, which runs as root).
  log "warning: not root: the test images are not built (the --image tests will skip)"
  exit 0
fi

is_static_busybox() {
  [[ -x $busybox ]] && ! LC_ALL=C readelf -l "$busybox" 2>/dev/null | grep -q 'INTERP'
}

ensure_deps() {
  local missing=()
  is_static_busybox || missing+=(busybox-static)
  command -v umoci >/dev/null || missing+=(umoci)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  command -v gcc >/dev/null || missing+=(gcc)
  [[ -f /usr/lib/x86_64-linux-gnu/libc.a ]] || missing+=(libc6-dev) # gcc -static
  command -v zstd >/dev/null || missing+=(zstd)
  command -v setfattr >/dev/null || missing+=(attr)
  command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
  command -v python3 >/dev/null || missing+=(python3)
  ((${#missing[@]})) || return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get; install them manually"
  log "installing ${missing[*]}"
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q --no-install-recommends)
  # Only refresh package lists when there are none, or when the install fails with stale ones.
  if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then
    apt-get -q update </dev/null >&2
  fi
  if ! "${apt[@]}" install "${missing[@]}" </dev/null >&2; then
    apt-get -q update </dev/null >&2
    "${apt[@]}" install "${missing[@]}" </dev/null >&2
  fi
  is_static_busybox || die "$busybox is not a static busybox (is the dynamic 'busybox' package shadowing busybox-static?)"
}

pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo none; }
# The versions apt would install now (what mmdebstrap gets from the same mirror): `name version` lines.
candidates() {
  LC_ALL=C apt-cache policy "$@" 2>/dev/null | awk '/^[^ ].*:$/ {p = $1} /Candidate:/ {print p, $2}' || true
}

compute_key() {
  {
    (cd "$here" && find . -type f ! -name '*.md' ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 |
      LC_ALL=C sort -z | xargs -0 sha256sum)
    for p in busybox-static umoci mmdebstrap gcc libc6-dev zstd e2fsprogs; do echo "$p $(pkg_version "$p")"; done
    echo "python $(python3 -c 'import sys; print(sys.version.split()[0])')"
    # The Debian root: its mirror, suite and the versions it would get of the packages that matter.
    echo "debian $mirror $suite"
    candidates python3.11-minimal libc6 base-files base-passwd | sed 's/^/debian /'
  } | sha256sum | cut -c1-16
}

ensure_deps
key="$(compute_key)"
out="$cache/test-images/$key"
if ((print_dir)); then echo "$out"; exit 0; fi

complete() { [[ -f $1/BUILT ]]; }
link_current() { ln -sfn "$key" "$cache/test-images/current"; }

if complete "$out"; then
  link_current
  log "cached at $out"
  echo "$out"
  exit 0
fi

mkdir -p "$cache/test-images"
# Assembled next to its final place (same filesystem) so that the last mv is atomic.
tmpout="$(mktemp -d "$cache/test-images/.tmp-$key.XXXXXX")"
trap '[[ -n ${SWIFTLET_TEST_IMAGES_KEEP:-} ]] || rm -rf "$tmpout"' EXIT
work="$tmpout/.work"
mkdir -p "$work"
started=$SECONDS
log "building $key in $tmpout"

# --- the base tree: static busybox, its applets, the probe -------------------------------------
base="$work/base"
mkdir -p "$base"/{bin,usr/bin,etc,home/alice}
install -m 0755 "$busybox" "$base/bin/busybox"
for applet in sh ls cat stat readlink id echo test [ pwd env printenv head wc sha256sum touch rm mkdir \
              grep find sleep true false mount uname sync od ln cp mv chmod tr cut sort; do
  ln -s busybox "$base/bin/$applet"
done
gcc -static -O2 -Wall -Werror -o "$work/probe" "$here/probe.c"
install -m 0755 "$work/probe" "$base/usr/bin/probe"
cat >"$base/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
alice:x:1000:1000:Alice:/home/alice:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$base/etc/group" <<'EOF'
root:x:0:
alice:x:1000:
nogroup:x:65534:
EOF
chmod 0644 "$base/etc/passwd" "$base/etc/group"
chown 1000:1000 "$base/home/alice"
chmod 0700 "$base/home/alice"

# --- oci/: umoci, four layers -------------------------------------------------------------------
# 1 the base tree; 2 the test files (owners, modes, links, devices, xattrs, long and UTF-8 names);
# 3 (umoci repack) deletes /data/gone and adds /data/new: umoci writes data/.wh.gone;
# 4 (umoci raw add-layer) replaces /olddir: olddir/.wh..wh..opq plus olddir/c.
oci="$tmpout/oci"
export SOURCE_DATE_EPOCH=1700000000
umoci init --layout "$oci"
umoci new --image "$oci:test"
# umoci marks an unpacked bundle's rootfs 0700 root: the repack must not turn that into `/`'s mode.
umoci unpack --image "$oci:test" "$work/b1" >/dev/null
cp -a "$base/." "$work/b1/rootfs/"
chmod 0755 "$work/b1/rootfs"
umoci repack --image "$oci:test" --history.created_by "base: busybox and probe" "$work/b1"

umoci unpack --image "$oci:test" "$work/b2" >/dev/null
r="$work/b2/rootfs"
mkdir -p "$r/data" "$r/olddir/sub" "$r/dev" "$r/data/emptydir" "$r/data/long"
printf 'keep\n' >"$r/data/keep"
chown 1000:1000 "$r/data/keep"
chmod 0640 "$r/data/keep"
ln "$r/data/keep" "$r/data/hard"
printf 'gone\n' >"$r/data/gone"
ln -s keep "$r/data/link"
ln -s /data/keep "$r/data/abslink"
printf '#!/bin/sh\necho suid\n' >"$r/data/suid"
chmod 4755 "$r/data/suid"
mkdir "$r/data/sgid" && chown 0:1000 "$r/data/sgid" && chmod 2775 "$r/data/sgid"
mkdir "$r/data/sticky" && chmod 1777 "$r/data/sticky"
mknod -m 0666 "$r/dev/testnull" c 1 3
mknod -m 0620 "$r/data/testnull" c 1 3
mknod -m 0640 "$r/data/testblock" b 7 0
mkfifo -m 0600 "$r/data/fifo"
printf 'x\n' >"$r/data/xattr"
setfattr -n user.swiftlet -v hello "$r/data/xattr"
: >"$r/data/empty"
printf 'utf8\n' >"$r/data/ünïcödé.txt"
longname="$(printf 'l%.0s' {1..200})"
printf 'long\n' >"$r/data/long/$longname"
python3 -c '
import hashlib, sys
# 3 MiB, deterministic, not compressible: counter-mode SHA-256.
data = b"".join(hashlib.sha256(i.to_bytes(8, "little")).digest() for i in range(3 * 1024 * 1024 // 32))
open(sys.argv[1], "wb").write(data)
print(hashlib.sha256(data).hexdigest())' "$r/data/big" >"$work/big.sha256"
printf 'a\n' >"$r/olddir/a"
printf 'b\n' >"$r/olddir/b"
printf 'deep\n' >"$r/olddir/sub/deep"
umoci repack --image "$oci:test" --history.created_by "test files" "$work/b2"

umoci unpack --image "$oci:test" "$work/b3" >/dev/null
rm "$work/b3/rootfs/data/gone"
printf 'new\n' >"$work/b3/rootfs/data/new"
umoci repack --image "$oci:test" --history.created_by "delete /data/gone, add /data/new" "$work/b3"

# Layer 4 is written by ocitool.py and added with `umoci raw add-layer`: umoci 0.4.7's
# `insert --opaque` writes the same entries (olddir/.wh..wh..opq, olddir/, olddir/c, in that order)
# but leaves the tar unterminated (no padding after the last file, no end-of-archive blocks).
python3 "$here/ocitool.py" opaque-layer "$work/opaque.tar"
umoci raw add-layer --image "$oci:test" --history.created_by "replace /olddir" "$work/opaque.tar"

umoci config --image "$oci:test" --config.env PATH=/usr/bin:/bin --config.env GREETING=hello-from-image \
  --config.workingdir /data
umoci tag --image "$oci:test" latest
# test-cmd: a command when none is given, as alice.
umoci config --image "$oci:test" --tag test-cmd --config.user alice \
  --config.entrypoint /bin/sh --config.entrypoint -c \
  --config.cmd 'echo cmd-ran uid=$(id -u) gid=$(id -g) cwd=$(pwd) greeting=$GREETING'
umoci gc --layout "$oci"
rm -rf "$work"/b1 "$work"/b2 "$work"/b3
python3 "$here/ocitool.py" verify "$oci" test >&2

# --- docker.tar: the same image as `docker save` writes it --------------------------------------
python3 "$here/ocitool.py" docker "$oci" test "$tmpout/docker.tar" >&2

# --- rootdir/, rootfs.tar{,.gz,.zst}, rootfs.ext4: a small busybox tree ------------------------
rootdir="$tmpout/rootdir"
cp -a "$base" "$rootdir"
printf 'from-rootdir\n' >"$rootdir/hello.txt"
printf 'secret\n' >"$rootdir/home/alice/secret"
chown 1000:1000 "$rootdir/home/alice/secret"
chmod 0600 "$rootdir/home/alice/secret"
ln -s hello.txt "$rootdir/hello-link"
# The tarballs: the same tree, with hello.txt saying where it came from; no ./ prefix.
tarroot="$work/tarroot"
cp -a "$rootdir" "$tarroot"
printf 'from-tarball\n' >"$tarroot/hello.txt"
(cd "$tarroot" && LC_ALL=C find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
  tar --numeric-owner --xattrs --no-recursion -cf "$tmpout/rootfs.tar" -T -)
gzip -9n <"$tmpout/rootfs.tar" >"$tmpout/rootfs.tar.gz"
zstd -q -19 <"$tmpout/rootfs.tar" >"$tmpout/rootfs.tar.zst"
# An ext4 image given as is (the rootdir tree, with its own hello.txt).
ext4root="$work/ext4root"
cp -a "$rootdir" "$ext4root"
printf 'from-ext4\n' >"$ext4root/hello.txt"
truncate -s 16M "$tmpout/rootfs.ext4"
mkfs.ext4 -q -F -b 4096 -m 0 -O ^has_journal -E root_owner=0:0 -d "$ext4root" "$tmpout/rootfs.ext4"

# --- debian.tar: a minimal Debian root with python3-minimal --------------------------------------
# The essential variant (Essential: yes packages, no apt) plus python3-minimal; merged /usr via
# usr-is-merged (the default pulls usrmerge, and with it perl); no recommends, docs, man pages or
# locales. About 80 MB.
deb_started=$SECONDS
mmdebstrap --quiet --variant=essential --include=python3-minimal \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --aptopt='APT::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  "$suite" "$tmpout/debian.tar" "$mirror" </dev/null >"$work/mmdebstrap.log" 2>&1 ||
  { tail -n 40 "$work/mmdebstrap.log" >&2; die "mmdebstrap failed (mirror $mirror; SWIFTLET_DEBIAN_MIRROR overrides it)"; }
log "debian.tar: $(du -h "$tmpout/debian.tar" | cut -f1) in $((SECONDS - deb_started)) s"

# --- bad images: OCI layouts with one defect each ------------------------------------------------
python3 "$here/ocitool.py" bad "$oci" test "$tmpout" >&2

cp "$work/big.sha256" "$tmpout/big.sha256"
rm -rf "$work"
{
  echo "key=$key"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "seconds=$((SECONDS - started))"
} >"$tmpout/BUILT"
chmod 0755 "$tmpout"
if ! mv -T "$tmpout" "$out" 2>/dev/null; then
  complete "$out" || die "could not move the output into $out"
  log "another build finished first; using it"
fi
link_current
log "built at $out in $((SECONDS - started)) s"
echo "$out"
