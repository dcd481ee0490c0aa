#!/usr/bin/env bash
# Runs untrusted code in Ultari sandboxes and shows the verdicts.
set -u
ULTARI=${1:-build/ultari}
report=$(mktemp /tmp/ultari-demo-XXXXXX.json)
trap 'rm -f "$report"' EXIT

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() {
  # show "description" [ultari run options] -- command...
  local what=$1; shift
  bold "$what"
  echo "\$ ultari run $*"
  "$ULTARI" run --report "$report" "$@"
  local rc=$?
  python3 - "$report" "$rc" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
denied = ", ".join(f"{d['name']}x{d['count']}" for d in r["denied_syscalls"]) or "none"
print(f"\n-> exit {sys.argv[2]}  verdict={r['verdict']}  wall={r['wall_ms']}ms  cpu={r['cpu_ms']}ms  "
      f"peak_mem={r['peak_memory_bytes'] // 1024}KiB  peak_pids={r['peak_pids']}  denied={denied}"
      + (f"  error={r['error']}" if r["error"] else ""))
PY
}

show "A normal program: works, sees only itself" -- python3 -c 'import os, socket; print("hello from", socket.gethostname(), "pid", os.getpid(), "uid", os.getuid())'
show "Reading the host's secrets: nothing there" -- sh -c 'ls /root /home; cat /etc/shadow; env'
show "A fork bomb: contained by the pids limit" --pids 64 --timeout 3s -- sh -c 'b() { b | b & }; b; sleep 5'
show "A memory bomb: OOM-killed at the limit" --memory 64M -- python3 -c 'x = [bytearray(1 << 20) for _ in range(1000)]'
show "An endless loop: stopped by the CPU-time limit" --cpu-time 1s -- sh -c 'while :; do :; done'
show "A sleeper: stopped by the wall-clock timeout" --timeout 500ms -- sleep 60
show "An output flood: cut at the output limit" --output-limit 64 -- sh -c 'yes flood'
show "Kernel attack surface: denied and reported" -- python3 -c '
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
for name, nr in [("keyctl", 250), ("bpf", 321), ("unshare", 272), ("mount", 165)]:
    libc.syscall(nr, 0, 0, 0, 0, 0)
    print(name, "->", os.strerror(ctypes.get_errno()))'
show "A crash: reported as a signal" -- python3 -c 'import os, signal; os.kill(os.getpid(), signal.SIGSEGV)'
echo
