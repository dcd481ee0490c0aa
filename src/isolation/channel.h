// Messages between the supervisor and the sandbox's init (pid 1) over a
// SOCK_SEQPACKET socketpair. Fixed-size structs: the child side formats
// nothing and allocates nothing.
#pragma once
#include <cstddef>
#include <cstdint>

namespace ultari::isolation {

enum class MsgType : uint32_t {
  Go = 1,            // supervisor -> child: id maps written, cgroups attached
  SetupError = 2,    // child -> supervisor: a setup step failed
  Listener = 3,      // child -> supervisor: seccomp listener fd (SCM_RIGHTS)
  ExecFailed = 5,    // payload -> supervisor: execve failed, errno in err
  Exited = 6,        // child -> supervisor: payload wait status in value
  Ready = 7,         // child -> supervisor: set up, waiting for the command
  Command = 8,       // supervisor -> child: value = bytes of the command
                     // blob that follow as raw records (see CommandHead)
  BootExited = 9,    // child -> supervisor: the boot step's wait status in value;
                     // err: the signal that ended the sandbox during it (0: the command starts)
};

struct Msg {
  MsgType type;
  int32_t err = 0;       // errno
  int64_t value = 0;
  char step[64] = {};    // what was being done ("mount proc", "pivot_root", ...)
  char detail[256] = {}; // the path or name involved
};

// The command a sandbox runs, sent after its setup (so a sandbox can be
// made ahead and given its command later). Layout of the blob: CommandHead,
// then NUL-terminated strings: cwd, argv[argc], envp[envc], the paths to
// try for argv[0] in order [candc], the boot step's argv[bootc] (run first,
// as root: ProcessSpec::boot).
struct CommandLimit {
  int32_t resource;
  uint64_t soft, hard;
};
struct CommandHead {
  uint32_t argc = 0, envc = 0, candc = 0;
  uint32_t uid = 0, gid = 0;
  // Every rlimit of the payload (the caller's, with Ultari's own in place),
  // applied clamped to init's hard limits: a sandbox made ahead by another
  // process must not run with that process's limits.
  uint32_t nlimits = 0;
  CommandLimit limits[16] = {};
  int32_t nice = 0;  // the caller's; a nicer value is applied, a higher priority cannot be
  uint32_t bootc = 0;                   // strings of the boot step's argv (0: none)
  uint32_t boot_uid = 0, boot_gid = 0;  // the boot step's ids (0 unless not mapped)
};
static_assert(sizeof(CommandHead) == 424, "the command blob's layout (tests build it by hand too)");
inline constexpr size_t kMaxCommandBytes = 4u << 20;     // > the kernel's usual 2 MiB for argv+envp
inline constexpr size_t kMaxCommandStrings = 256u << 10;
inline constexpr size_t kCommandChunk = 32u << 10;        // one record on the control socket

// Copies a C string into a fixed buffer; async-signal-safe.
inline void copy_cstr(char* dst, size_t cap, const char* src) {
  size_t i = 0;
  if (src)
    for (; src[i] && i + 1 < cap; ++i) dst[i] = src[i];
  dst[i] = '\0';
}

}  // namespace ultari::isolation
