// openat2(2), retried where the kernel asks for it.
#pragma once
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

namespace ultari {

// openat2 with `how`. A scoped lookup (RESOLVE_IN_ROOT or RESOLVE_BENEATH)
// that steps over ".." fails with EAGAIN whenever any rename or mount
// anywhere on the machine races with it: the kernel cannot then prove the
// ".." stayed inside. A busy host (other sandboxes starting) makes that
// common, so such a failure is retried; the bound keeps a caller from
// spinning forever against a party that renames without pause, and the last
// EAGAIN is returned then. Async-signal-safe (the sandbox's child uses it).
inline int openat2_retrying(int dfd, const char* path, const open_how& how) {
  constexpr int kTries = 1000;
  int fd = -1;
  for (int i = 0; i < kTries; ++i) {
    fd = static_cast<int>(syscall(SYS_openat2, dfd, path, &how, sizeof how));
    if (fd >= 0 || errno != EAGAIN || (how.resolve & (RESOLVE_IN_ROOT | RESOLVE_BENEATH)) == 0) break;
  }
  return fd;
}

}  // namespace ultari
