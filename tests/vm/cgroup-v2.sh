#!/usr/bin/env bash
# cgroup v2 test in a VM: the host's cgroup layout is hybrid v1, so `ultari run`
# is exercised on a pure cgroup v2 hierarchy inside QEMU (TCG), booting Debian's
# linux-image-cloud-amd64 kernel with an initramfs built here on the fly
# (busybox, the ultari binaries and their libraries, the kernel modules the
# sandbox needs, and tests/vm/guest-init.sh as /init).
#
# Usage: tests/vm/cgroup-v2.sh BUILD_DIR
#   BUILD_DIR holds `ultari` and `tests/unit_tests` (the latter is optional).
# Exit: 0 all guest checks passed, 1 a check failed or the VM did not finish,
#       2 bad usage or missing build, 77 (ctest SKIP) qemu, the cloud kernel,
#       busybox or cpio missing.
# Environment: ULTARI_VM_TIMEOUT (seconds, default 300), ULTARI_VM_KERNEL
#   (a vmlinuz path instead of the newest /boot/vmlinuz-*-cloud-amd64),
#   ULTARI_VM_KEEP=1 keeps the work directory for inspection, ULTARI_VM_DEBUG=FILE
#   has the guest source FILE (shell, with the helpers of guest-init.sh) before the checks.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TIMEOUT=${ULTARI_VM_TIMEOUT:-300}
MODULES=(overlay)   # loaded in the guest, with their dependencies

say() { echo "vm-test: $*"; }
skip() { say "SKIP: $*"; exit 77; }
die() { say "ERROR: $*" >&2; exit 2; }

[ $# -eq 1 ] || die "usage: $0 BUILD_DIR"
BUILD_DIR=$(cd "$1" 2>/dev/null && pwd) || die "no build directory '$1'"
ULTARI=$BUILD_DIR/ultari
UNIT_TESTS=$BUILD_DIR/tests/unit_tests
[ -x "$ULTARI" ] || die "$ULTARI is missing: build it first (make -C $BUILD_DIR ultari unit_tests)"

# --- What the host must have ------------------------------------------------
command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"
command -v cpio >/dev/null || skip "cpio not installed (apt-get install cpio)"
BUSYBOX=$(command -v busybox || true)
[ -n "$BUSYBOX" ] || skip "busybox not installed (apt-get install busybox-static)"
if [ -n "${ULTARI_VM_KERNEL:-}" ]; then
  KERNEL=$ULTARI_VM_KERNEL
else
  KERNEL=$(ls -1 /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1 || true)
fi
[ -n "$KERNEL" ] && [ -f "$KERNEL" ] || skip "no Debian cloud kernel in /boot (apt-get install linux-image-cloud-amd64)"
[ -r "$KERNEL" ] || skip "$KERNEL is not readable (run as root)"
KVER=${KERNEL##*/vmlinuz-}
MODDIR=/lib/modules/$KVER
[ -f "$MODDIR/modules.dep" ] || skip "no modules for $KVER in $MODDIR"

# --- Kernel configuration the tests rely on ---------------------------------
CONFIG=/boot/config-$KVER
if [ -r "$CONFIG" ]; then
  missing=()
  for opt in USER_NS PID_NS NET_NS IPC_NS UTS_NS CGROUPS MEMCG CGROUP_PIDS CGROUP_SCHED FAIR_GROUP_SCHED \
             CFS_BANDWIDTH SECCOMP_FILTER DEVTMPFS TMPFS BLK_DEV_INITRD; do
    grep -qx "CONFIG_$opt=y" "$CONFIG" || missing+=("$opt")
  done
  grep -qE '^CONFIG_OVERLAY_FS=(y|m)$' "$CONFIG" || missing+=(OVERLAY_FS)
  [ ${#missing[@]} -eq 0 ] || say "warning: $KVER lacks CONFIG_${missing[*]} (checks depending on them will fail)"
  say "kernel $KVER: $(grep -E '^CONFIG_(USER_NS|OVERLAY_FS|MEMCG|CGROUP_PIDS|CFS_BANDWIDTH)=' "$CONFIG" | tr '\n' ' ')"
fi

# --- Work directory ------------------------------------------------------------
WORK=$(mktemp -d /tmp/ultari-vm.XXXXXX)
QEMU_PID=""
TAIL_PID=""
cleanup() {
  local rc=$?
  if [ -n "$QEMU_PID" ]; then kill "$QEMU_PID" 2>/dev/null; wait "$QEMU_PID" 2>/dev/null; fi
  if [ -n "$TAIL_PID" ]; then kill "$TAIL_PID" 2>/dev/null; fi
  if [ "${ULTARI_VM_KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ROOT=$WORK/root
mkdir -p "$ROOT"/usr/{bin,sbin,lib,lib64} "$ROOT"/{dev,proc,sys,tmp,run,root,etc,tests,var/cache,var/tmp,newroot}
# Merged /usr, as on the host: the sandbox's default root binds the guest's
# /usr and recreates these links.
for d in bin sbin lib lib64; do ln -s "usr/$d" "$ROOT/$d"; done
chmod 1777 "$ROOT/tmp" "$ROOT/var/tmp"
chmod 0700 "$ROOT/root"

# Copies a file to the same path under $ROOT (through the merged-/usr links).
put() { mkdir -p "$ROOT$(dirname "$2")"; cp -L "$1" "$ROOT$2"; }
# Copies an executable and every shared library ldd lists for it, at the
# same paths, with the dynamic loader.
put_with_libs() {
  local src=$1 dst=$2
  if command -v strip >/dev/null && [[ $dst != *busybox ]]; then
    mkdir -p "$ROOT$(dirname "$dst")"
    strip --strip-debug -o "$ROOT$dst" "$src"
  else
    put "$src" "$dst"
  fi
  chmod 0755 "$ROOT$dst"
  local lib
  # "libc.so.6 => /lib/.../libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
  while read -r lib; do
    if [ -n "$lib" ] && [ ! -e "$ROOT$lib" ]; then put "$lib" "$lib"; fi
  done < <(ldd "$src" 2>/dev/null | sed -nE 's/.*=> (\/[^ ]+) .*/\1/p; s/^[[:space:]]*(\/[^ ]+) \(0x.*/\1/p')
}

# busybox and its applets, under /usr/bin so that they exist in the sandbox too.
put_with_libs "$BUSYBOX" /usr/bin/busybox
for applet in $("$BUSYBOX" --list); do
  [ -e "$ROOT/usr/bin/$applet" ] || ln -s busybox "$ROOT/usr/bin/$applet"
done

put_with_libs "$ULTARI" /usr/bin/ultari
# Static: the same file is run on the guest and inside its sandboxes.
if [ -x "$BUILD_DIR/tests/quota_probe" ]; then put "$BUILD_DIR/tests/quota_probe" /usr/bin/quota_probe; fi
if [ -x "$UNIT_TESTS" ]; then
  put_with_libs "$UNIT_TESTS" /tests/unit_tests
else
  say "warning: $UNIT_TESTS missing; the guest skips the cgroup unit tests"
fi

# Kernel modules, dependencies first (modules.dep lists a module's whole
# dependency closure; loading each dependency's own list first orders it).
declare -A seen=()
ORDER=()
module_path() {  # name -> relative path in modules.dep, "" if built in / unknown
  awk -F: -v n="$1" '{ f = $1; sub(/.*\//, "", f); sub(/\.ko(\.(xz|zst|gz))?$/, "", f);
                       gsub(/-/, "_", f); m = n; gsub(/-/, "_", m); if (f == m) { print $1; exit } }' \
    "$MODDIR/modules.dep"
}
add_module() {  # relative path
  local rel=$1 dep
  if [ -n "${seen[$rel]:-}" ]; then return 0; fi
  seen[$rel]=1
  for dep in $(awk -F: -v p="$rel" '$1 == p { print $2 }' "$MODDIR/modules.dep"); do add_module "$dep"; done
  ORDER+=("$rel")
}
for m in "${MODULES[@]}"; do
  rel=$(module_path "$m")
  if [ -n "$rel" ]; then
    add_module "$rel"
  elif grep -q "/$m.ko" "$MODDIR/modules.builtin" 2>/dev/null; then
    say "module $m is built into $KVER"
  else
    die "module $m not found for $KVER"
  fi
done
: > "$ROOT/etc/vm-modules"
for rel in "${ORDER[@]}"; do
  dst=/lib/modules/$KVER/${rel%.*}
  dst=${dst%.ko}.ko
  mkdir -p "$ROOT$(dirname "$dst")"
  case $rel in  # busybox insmod takes plain .ko files
    *.ko.xz) xz -dc "$MODDIR/$rel" > "$ROOT$dst" ;;
    *.ko.zst) zstd -qdc "$MODDIR/$rel" > "$ROOT$dst" ;;
    *.ko.gz) gzip -dc "$MODDIR/$rel" > "$ROOT$dst" ;;
    *) cp "$MODDIR/$rel" "$ROOT$dst" ;;
  esac
  echo "$dst" >> "$ROOT/etc/vm-modules"
done
say "modules: ${ORDER[*]:-none}"

# A minimal /etc; ultari copies it into the sandbox's root.
cat > "$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
sbx:x:1000:1000:rootless test user:/tmp/sbx:/bin/sh
EOF
cat > "$ROOT/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
sbx:x:1000:
EOF
echo ultari-vm > "$ROOT/etc/hostname"
: > "$ROOT/etc/resolv.conf"
echo "127.0.0.1 localhost" > "$ROOT/etc/hosts"

install -m 0755 "$HERE/guest-init.sh" "$ROOT/init"
if [ -n "${ULTARI_VM_DEBUG:-}" ]; then install -m 0644 "$ULTARI_VM_DEBUG" "$ROOT/etc/vm-debug.sh"; fi

( cd "$ROOT" && find . -print0 | cpio --null -o -H newc --quiet ) > "$WORK/initramfs.cpio"
say "initramfs: $(du -h "$WORK/initramfs.cpio" | cut -f1) (uncompressed), kernel $KERNEL"

# --- Boot ------------------------------------------------------------------------
LOG=$WORK/console.log
: > "$LOG"
start=$(date +%s.%N)
# KVM exists here but does not boot guests reliably: TCG only.
timeout -k 5 "$TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -m 1024 -smp 2 -nographic -no-reboot \
  -kernel "$KERNEL" -initrd "$WORK/initramfs.cpio" \
  -append "console=ttyS0 panic=-1 oops=panic quiet loglevel=3 rdinit=/init" \
  < /dev/null > "$LOG" 2>&1 &
QEMU_PID=$!
tail -n +1 -f --pid="$QEMU_PID" "$LOG" | tr -d '\r' &
TAIL_PID=$!
qemu_rc=0
wait "$QEMU_PID" || qemu_rc=$?
QEMU_PID=""
wait "$TAIL_PID" 2>/dev/null || true
TAIL_PID=""
elapsed=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')

# --- Verdict -------------------------------------------------------------------
clean=$(tr -d '\r' < "$LOG")
echo "----"
if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
  say "FAILED: the VM did not finish within ${TIMEOUT}s (killed)"
  exit 1
fi
done_line=$(grep -E '^VM-TESTS-DONE passed=[0-9]+ failed=[0-9]+' <<<"$clean" | tail -n 1 || true)
if [ -z "$done_line" ]; then
  say "FAILED: no VM-TESTS-DONE line (qemu exit $qemu_rc, ${elapsed}s)"
  exit 1
fi
grep -E '^FAIL ' <<<"$clean" | sed 's/^/vm-test: /' || true
passed=$(sed -E 's/.*passed=([0-9]+).*/\1/' <<<"$done_line")
failed=$(sed -E 's/.*failed=([0-9]+).*/\1/' <<<"$done_line")
say "$passed passed, $failed failed"
say "duration: ${elapsed}s (boot + tests)"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
