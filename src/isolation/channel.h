// Messages between the supervisor and the sandbox's init (pid 1) over a
// SOCK_SEQPACKET socketpair. Fixed-size structs: the child side formats
// nothing and allocates nothing.
#pragma once
#include <cstdint>

namespace ultari::isolation {

enum class MsgType : uint32_t {
  Go = 1,            // supervisor -> child: id maps written, cgroups attached
  SetupError = 2,    // child -> supervisor: a setup step failed
  Listener = 3,      // child -> supervisor: seccomp listener fd (SCM_RIGHTS)
  ExecFailed = 5,    // payload -> supervisor: execve failed, errno in err
  Exited = 6,        // child -> supervisor: payload wait status in value
};

struct Msg {
  MsgType type;
  int32_t err = 0;       // errno
  int64_t value = 0;
  char step[64] = {};    // what was being done ("mount proc", "pivot_root", ...)
  char detail[256] = {}; // the path or name involved
};

// Copies a C string into a fixed buffer; async-signal-safe.
inline void copy_cstr(char* dst, size_t cap, const char* src) {
  size_t i = 0;
  if (src)
    for (; src[i] && i + 1 < cap; ++i) dst[i] = src[i];
  dst[i] = '\0';
}

}  // namespace ultari::isolation
