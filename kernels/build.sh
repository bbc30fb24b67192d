#!/usr/bin/env bash
# Build (or reuse from the cache) the Swiftlet guest kernel: Linux 6.1 from
# Debian's linux-source-6.1 package, configured as tinyconfig plus
# config-6.1-microvm.fragment.
#
# Usage: kernels/build.sh [--variant peers] [--print-dir] [--force]
#   (no args)    build if needed, then point $CACHE/default/{bzImage,vmlinux,config}
#                at the result. A cache hit prints one line and takes well under 1 s.
#   --variant peers  the peer-bootable variant for VMM comparisons: kernels/patches
#                plus kernels/patches-peers (kernels/README.md). Its own output,
#                source and object directories; links in $CACHE/peers/, never
#                $CACHE/default/.
#   --print-dir  print the output directory for the current inputs and exit
#                (nothing is built; it may or may not exist yet).
#   --force      rebuild even if the output directory already exists.
#
# Environment:
#   SWIFTLET_CACHE        cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/swiftlet)
#   SWIFTLET_KERNEL_JOBS  parallel make jobs (default: nproc)
#
# Cache layout:
#   $CACHE/kernel/6.1-<pkgversion>-<hash16>/{bzImage,vmlinux,config,System.map,build.log}
#   $CACHE/kernel-src/linux-source-6.1-<pkgversion>/   pristine unpacked source (reused)
#   $CACHE/kernel-src/linux-source-6.1-<pkgversion>-p<patches>/  the same, with kernels/patches applied
#   $CACHE/kernel-src/build-<pkgversion>-p<patches>/   out-of-tree objects (incremental)
#   $CACHE/default/{bzImage,vmlinux,config}            symlinks used by the Swiftlet CLI
#   $CACHE/kernel/6.1-<pkgversion>-peers-<hash16>/     --variant peers (same files)
#   $CACHE/peers/{bzImage,vmlinux,config}              symlinks to the peers variant
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FRAGMENT="$SCRIPT_DIR/config-6.1-microvm.fragment"
# Guest-kernel patches, applied in name order. Each is a last resort, with its
# evidence in kernels/README.md.
shopt -s nullglob
PATCHES=("$SCRIPT_DIR"/patches/*.patch)
shopt -u nullglob

SRC_PKG=linux-source-6.1
SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz
SRC_TOPDIR=linux-source-6.1          # top-level directory inside the tarball
DEPS=(linux-source-6.1 build-essential patch flex bison bc libelf-dev libssl-dev lz4 xz-utils cpio)

# Everything in this script that influences the produced images. It is hashed
# together with the fragment into the cache key: bump RECIPE_REV whenever the
# build steps below change in a way that changes the output.
RECIPE_REV=1
KARCH=x86_64
BASE_CONFIG=tinyconfig
KBUILD_VARS=(KBUILD_BUILD_USER=swiftlet KBUILD_BUILD_HOST=swiftlet)
RECIPE="rev=$RECIPE_REV arch=$KARCH base=$BASE_CONFIG merge=merge_config.sh-m+olddefconfig targets=bzImage,vmlinux vmlinux=strip-debug ${KBUILD_VARS[*]}"

CACHE=${SWIFTLET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/swiftlet}
JOBS=${SWIFTLET_KERNEL_JOBS:-$(nproc)}

MODE=build
FORCE=0
VARIANT=default
while (($#)); do
    case $1 in
        --print-dir) MODE=print-dir ;;
        --force) FORCE=1 ;;
        --variant) (($# >= 2)) || { echo "kernel: --variant needs a name (peers)" >&2; exit 2; }
                   VARIANT=$2; shift ;;
        --variant=*) VARIANT=${1#--variant=} ;;
        -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "kernel: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
case $VARIANT in
    default) ;;
    # The peers variant adds patches that keep every instruction Swiftlet
    # completes in its VMM out of the guest kernel's boot path (kernels/README.md).
    peers) shopt -s nullglob; PATCHES+=("$SCRIPT_DIR"/patches-peers/*.patch); shopt -u nullglob ;;
    *) echo "kernel: unknown variant: $VARIANT (known: default, peers)" >&2; exit 2 ;;
esac

# Messages go to stdout, except with --print-dir where stdout carries only the path.
if [[ $MODE == print-dir ]]; then exec 4>&2; else exec 4>&1; fi
say() { printf 'kernel: %s\n' "$*" >&4; }
die() { printf 'kernel: error: %s\n' "$*" >&2; exit 1; }

# --------------------------------------------------------------------------
# Dependencies (Debian packages). One dpkg-query call when all are present.
# --------------------------------------------------------------------------
missing_deps() {
    local installed
    installed=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${DEPS[@]}" 2>/dev/null || true)
    local p
    for p in "${DEPS[@]}"; do
        grep -qE "^$p ii" <<<"$installed" || printf '%s\n' "$p"
    done
}

ensure_deps() {
    local -a missing
    mapfile -t missing < <(missing_deps)
    ((${#missing[@]} == 0)) && return 0

    local -a sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "missing packages (${missing[*]}) and not root; install them first"
        sudo=(sudo -n)
    fi
    export DEBIAN_FRONTEND=noninteractive
    local aptlog
    aptlog=$(mktemp)
    say "installing build dependencies: ${missing[*]}"
    local -a install=("${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}")
    # Only refresh the package lists when they are empty or the install fails.
    if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null; then
        "${sudo[@]}" apt-get update -qq >>"$aptlog" 2>&1 || true
    fi
    if ! "${install[@]}" </dev/null >>"$aptlog" 2>&1; then
        say "apt-get install failed; running apt-get update and retrying"
        if ! { "${sudo[@]}" apt-get update -qq && "${install[@]}"; } </dev/null >>"$aptlog" 2>&1; then
            tail -n 20 "$aptlog" >&2
            rm -f "$aptlog"
            die "could not install: ${missing[*]}"
        fi
    fi
    rm -f "$aptlog"
}

ensure_deps
[[ -f $FRAGMENT ]] || die "config fragment not found: $FRAGMENT"
[[ -f $SRC_TARBALL ]] || die "$SRC_TARBALL not found (is $SRC_PKG installed?)"

# --------------------------------------------------------------------------
# Cache key and paths
# --------------------------------------------------------------------------
PKG_VERSION=$(dpkg-query -W -f='${Version}' "$SRC_PKG")
VERSION_SAFE=${PKG_VERSION//[^A-Za-z0-9._+-]/_}     # e.g. an epoch's ':' -> '_'
PATCH_HASH=$(cat /dev/null "${PATCHES[@]}" | sha256sum | cut -c1-8)
HASH=$({ cat "$FRAGMENT" "${PATCHES[@]}"; printf '%s\n' "$RECIPE"; } | sha256sum | cut -c1-16)
if [[ $VARIANT == default ]]; then
    OUT_DIR="$CACHE/kernel/6.1-$VERSION_SAFE-$HASH"
else
    OUT_DIR="$CACHE/kernel/6.1-$VERSION_SAFE-$VARIANT-$HASH"
fi
SRC_ROOT="$CACHE/kernel-src"
SRC_DIR="$SRC_ROOT/linux-source-6.1-$VERSION_SAFE"
PATCHED_DIR="$SRC_ROOT/linux-source-6.1-$VERSION_SAFE-p$PATCH_HASH"
BUILD_DIR="$SRC_ROOT/build-$VERSION_SAFE-p$PATCH_HASH"
if [[ $VARIANT == default ]]; then DEFAULT_DIR="$CACHE/default"; else DEFAULT_DIR="$CACHE/$VARIANT"; fi

if [[ $MODE == print-dir ]]; then
    printf '%s\n' "$OUT_DIR"
    exit 0
fi

link_defaults() {
    mkdir -p "$DEFAULT_DIR"
    local f
    for f in bzImage vmlinux config; do
        ln -sfn "$OUT_DIR/$f" "$DEFAULT_DIR/$f"
    done
}

is_built() { [[ -f $OUT_DIR/bzImage && -f $OUT_DIR/vmlinux && -f $OUT_DIR/config ]]; }

if ((FORCE == 0)) && is_built; then
    link_defaults
    say "cached at $OUT_DIR"
    exit 0
fi

# --------------------------------------------------------------------------
# Build (serialised with a lock so concurrent invocations don't collide)
# --------------------------------------------------------------------------
mkdir -p "$CACHE/kernel" "$SRC_ROOT"
exec 9>"$CACHE/kernel/.lock"
if ! flock -n 9; then
    say "another kernel build is running; waiting for it"
    flock 9
fi
if ((FORCE == 0)) && is_built; then     # it may have built exactly this one
    link_defaults
    say "cached at $OUT_DIR"
    exit 0
fi

START=$SECONDS
LOG="$SRC_ROOT/build-$VERSION_SAFE-$HASH.log"
: >"$LOG"
say "building Linux $PKG_VERSION ($BASE_CONFIG + $(basename "$FRAGMENT"), variant $VARIANT, ${#PATCHES[@]} patch(es)), $JOBS jobs"
say "full log: $LOG"

TMP_OUT=
cleanup() { [[ -n $TMP_OUT && -d $TMP_OUT ]] && rm -rf "$TMP_OUT"; return 0; }
trap cleanup EXIT

fail() {
    printf 'kernel: error: %s; last lines of %s:\n' "$1" "$LOG" >&2
    tail -n 40 "$LOG" >&2
    exit 1
}

# 1. Pristine source, unpacked once per package version.
if [[ ! -f $SRC_DIR.unpacked || ! -d $SRC_DIR ]]; then
    say "unpacking $SRC_TARBALL"
    rm -rf "$SRC_DIR" "$SRC_DIR.tmp" "$SRC_DIR.unpacked"
    mkdir -p "$SRC_DIR.tmp"
    tar -xJf "$SRC_TARBALL" -C "$SRC_DIR.tmp" >>"$LOG" 2>&1 || fail "unpacking failed"
    [[ -d $SRC_DIR.tmp/$SRC_TOPDIR ]] || fail "tarball has no $SRC_TOPDIR/ directory"
    mv "$SRC_DIR.tmp/$SRC_TOPDIR" "$SRC_DIR"
    rm -rf "$SRC_DIR.tmp"
    touch "$SRC_DIR.unpacked"
fi

# 1b. The patched tree: a hard-link copy of the pristine one, where each file a
#     patch touches is first made a real copy, so the pristine tree stays pristine.
if [[ ! -f $PATCHED_DIR.patched || ! -d $PATCHED_DIR ]]; then
    say "applying ${#PATCHES[@]} patch(es)"
    rm -rf "$PATCHED_DIR" "$PATCHED_DIR.tmp" "$PATCHED_DIR.patched"
    cp -al "$SRC_DIR" "$PATCHED_DIR.tmp"
    for p in "${PATCHES[@]}"; do
        while read -r f; do
            [[ -f $PATCHED_DIR.tmp/$f ]] && cp --remove-destination "$SRC_DIR/$f" "$PATCHED_DIR.tmp/$f"
        done < <(sed -n 's|^+++ b/\([^[:space:]]*\).*|\1|p' "$p")
        patch -d "$PATCHED_DIR.tmp" -p1 -s --no-backup-if-mismatch <"$p" >>"$LOG" 2>&1 || fail "patch $(basename "$p") does not apply"
    done
    mv "$PATCHED_DIR.tmp" "$PATCHED_DIR"
    touch "$PATCHED_DIR.patched"
fi

kmake() {
    make -C "$PATCHED_DIR" O="$BUILD_DIR" ARCH="$KARCH" "${KBUILD_VARS[@]}" "$@"
}

# 2. Configuration: tinyconfig + fragment + olddefconfig.
mkdir -p "$BUILD_DIR"
say "configuring"
{
    kmake "$BASE_CONFIG" &&
    (cd "$PATCHED_DIR" && ARCH="$KARCH" scripts/kconfig/merge_config.sh -m -O "$BUILD_DIR" \
        "$BUILD_DIR/.config" "$FRAGMENT") &&
    kmake olddefconfig
} </dev/null >>"$LOG" 2>&1 || fail "configuration failed"

# 3. Verify that olddefconfig kept every setting of the fragment:
#    CONFIG_X=y must stay =y, numbers/strings must match exactly,
#    "# CONFIG_X is not set" must not have been turned on by a select.
verify_config() {
    local frag=$1 cfg=$2 line key want got bad=()
    declare -A final=()
    while IFS= read -r line; do
        if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
            final[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
        fi
    done <"$cfg"
    while IFS= read -r line; do
        if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
            key=${BASH_REMATCH[1]} want=${BASH_REMATCH[2]}
            got=${final[$key]-"is not set"}
            [[ $got == "$want" ]] || bad+=("$key: wanted $want, got $got")
        elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set ]]; then
            key=${BASH_REMATCH[1]}
            got=${final[$key]-}
            [[ $got != y && $got != m ]] || bad+=("$key: wanted off, got $got (selected by another option)")
        fi
    done <"$frag"
    if ((${#bad[@]})); then
        printf 'kernel: error: %d fragment option(s) not honoured by olddefconfig:\n' "${#bad[@]}" >&2
        printf '  %s\n' "${bad[@]}" >&2
        return 1
    fi
}
verify_config "$FRAGMENT" "$BUILD_DIR/.config" || die "config verification failed (see $BUILD_DIR/.config)"
say "config verified ($(grep -cE '^CONFIG_[A-Za-z0-9_]+=' "$FRAGMENT") options set, $(grep -cE '^# CONFIG_.* is not set' "$FRAGMENT") kept off)"

# 4. Compile, with a compact progress counter; the full output goes to $LOG.
progress() {
    local line n=0 warnings=0
    exec 3>>"$LOG"
    while IFS= read -r line; do
        printf '%s\n' "$line" >&3
        case $line in
            "  CC "* | "  AS "* | "  HOSTCC "* | "  AR "*)
                n=$((n + 1))
                if ((n % 200 == 0)); then
                    say "  ... $n files compiled ($((SECONDS - START))s)"
                fi
                ;;
            "  LD      vmlinux" | "  LD      arch/x86/boot/compressed/vmlinux")
                say "  ${line#  }" ;;
            *"warning:"*) warnings=$((warnings + 1)) ;;
        esac
    done
    exec 3>&-
    say "  $n files compiled, $warnings compiler warning(s)"
}
say "compiling bzImage + vmlinux"
if ! kmake -j"$JOBS" bzImage vmlinux </dev/null 2>&1 | progress; then
    fail "kernel build failed"
fi

# 5. Publish atomically: assemble in a temp dir, then rename into place.
BZIMAGE="$BUILD_DIR/arch/x86/boot/bzImage"
[[ -f $BZIMAGE && -f $BUILD_DIR/vmlinux ]] || fail "build finished but images are missing"
TMP_OUT=$(mktemp -d "$CACHE/kernel/.tmp-XXXXXX")
cp "$BZIMAGE" "$TMP_OUT/bzImage"
strip --strip-debug -o "$TMP_OUT/vmlinux" "$BUILD_DIR/vmlinux"
cp "$BUILD_DIR/.config" "$TMP_OUT/config"
cp "$BUILD_DIR/System.map" "$TMP_OUT/System.map"
cp "$LOG" "$TMP_OUT/build.log"
chmod 755 "$TMP_OUT"
rm -rf "$OUT_DIR"
mv -T "$TMP_OUT" "$OUT_DIR"
TMP_OUT=
link_defaults

# Boot protocol version: u16 LE at offset 0x206 of the setup header.
BOOT_PROTO=$(od -An -tx2 -j $((0x206)) -N2 "$OUT_DIR/bzImage" | tr -d ' ')
say "built in $((SECONDS - START))s: $OUT_DIR"
say "  bzImage $(stat -c %s "$OUT_DIR/bzImage") bytes (boot protocol ${BOOT_PROTO:0:2}.${BOOT_PROTO:2:2} hex), vmlinux $(stat -c %s "$OUT_DIR/vmlinux") bytes"
say "  links: $DEFAULT_DIR/{bzImage,vmlinux,config}"
